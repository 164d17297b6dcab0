package state

import (
	"testing"

	"google.golang.org/protobuf/proto"

	pb "github.com/blixard/blixard/api/blixardpb"
)

// FuzzValidateTaskSpec: any TaskSpec a client can send is accepted or
// refused with an error naming a field, never a panic; the verdict is the
// same for a copy (every node validates again when it applies the entry).
func FuzzValidateTaskSpec(f *testing.F) {
	for _, s := range []*pb.TaskSpec{
		{Command: "/bin/echo", Args: []string{"hi"}, Resources: &pb.Resources{CpuMillis: 100, MemoryMib: 64}},
		{Command: "sh", Args: []string{"-c", "exit 3"}, MaxRetries: 2, RetryBackoffBaseMs: 100, RetryBackoffMaxMs: 1000, TimeoutMs: 5000, Constraints: map[string]string{"zone": "a"}, Policy: pb.PlacementPolicy_PLACEMENT_POLICY_SPREAD, User: "nobody"},
		{Command: " ", Resources: &pb.Resources{CpuMillis: -1}},
		{Command: "x", MaxRetries: -1, KillGraceMs: -5, Node: 3, Env: map[string]string{"": "v", "A=B": "c"}},
	} {
		b, err := proto.Marshal(s)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var s pb.TaskSpec
		if proto.Unmarshal(data, &s) != nil {
			return
		}
		err := ValidateTaskSpec(&s)
		err2 := ValidateTaskSpec(proto.Clone(&s).(*pb.TaskSpec))
		if (err == nil) != (err2 == nil) || (err != nil && err.Error() != err2.Error()) {
			t.Fatalf("verdicts differ: %v vs %v", err, err2)
		}
	})
}

// FuzzVMSpec: NormalizeVMSpec then ValidateVMSpec on any VMSpec a client
// can send never panics; normalizing is idempotent and leaves its input
// alone, and a valid normalized spec stays valid through the wire.
func FuzzVMSpec(f *testing.F) {
	for _, s := range []*pb.VMSpec{
		{Name: "web"},
		{Name: "db-1", Vcpus: 2, MemoryMib: 512, Kernel: "/var/lib/blixard/vmlinux", Initrd: "/var/lib/blixard/initrd.img", Disk: "/srv/db.img", Cmdline: "quiet", Network: "user",
			Ports: []*pb.PortForward{{HostPort: 5432, GuestPort: 5432}, {HostPort: 5353, GuestPort: 53, Protocol: "udp"}}, Restart: pb.RestartPolicy_RESTART_POLICY_ON_FAILURE, Constraints: map[string]string{"disk": "ssd"}, Node: 2},
		{Name: "-bad", Vcpus: 1000, Network: "tap", Ports: []*pb.PortForward{{HostPort: 70000}}},
		{Name: "x", Ports: []*pb.PortForward{{HostPort: 80, GuestPort: 80}, {HostPort: 80, GuestPort: 81, Protocol: "tcp"}}},
	} {
		b, err := proto.Marshal(s)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var s pb.VMSpec
		if proto.Unmarshal(data, &s) != nil {
			return
		}
		orig := proto.Clone(&s)
		n := NormalizeVMSpec(&s)
		if !proto.Equal(orig, &s) {
			t.Fatal("NormalizeVMSpec changed its argument")
		}
		if !proto.Equal(n, NormalizeVMSpec(n)) {
			t.Fatal("NormalizeVMSpec is not idempotent")
		}
		if ValidateVMSpec(n) != nil {
			return
		}
		b, err := proto.Marshal(n)
		if err != nil {
			t.Fatal(err)
		}
		var back pb.VMSpec
		if err := proto.Unmarshal(b, &back); err != nil {
			t.Fatal(err)
		}
		if err := ValidateVMSpec(&back); err != nil {
			t.Fatalf("valid spec invalid after a round trip: %v", err)
		}
	})
}
