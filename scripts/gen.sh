#!/usr/bin/env bash
# Regenerates the protobuf Go code in api/.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v protoc >/dev/null 2>&1; then
  if [ "$(id -u)" -eq 0 ]; then apt-get update -qq && apt-get install -y -qq protobuf-compiler
  else echo "error: protoc missing — sudo apt-get install protobuf-compiler" >&2; exit 1; fi
fi
go install google.golang.org/protobuf/cmd/protoc-gen-go@v1.36.11
go install google.golang.org/grpc/cmd/protoc-gen-go-grpc@v1.6.2
export PATH="$(go env GOPATH)/bin:$PATH"
rm -f api/blixardpb/*.pb.go api/blixardrpc/*.pb.go
protoc --go_out=. --go_opt=paths=source_relative api/blixardpb/blixard.proto
protoc --go_out=. --go_opt=paths=source_relative \
  --go-grpc_out=. --go-grpc_opt=paths=source_relative api/blixardrpc/service.proto
