// Command blixard is both the Blixard node daemon ('blixard node',
// 'blixard dev') and the client for a running cluster. See docs/CLI.md.
package main

import (
	"context"
	"os"
)

func main() {
	root := newRootCmd(defaultDeps())
	os.Exit(execute(context.Background(), root, os.Args[1:]))
}
