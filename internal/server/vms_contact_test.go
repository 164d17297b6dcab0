package server

import (
	"os"
	"path/filepath"
	"testing"
	"time"
)

// The last contact survives a process restart on the boot-time clock, and
// a record from another boot (or a damaged one) gives no credit.
func TestContactFileCarriesTheLastContactAcrossRestarts(t *testing.T) {
	p := filepath.Join(t.TempDir(), vmContactName)
	if _, ok := contactAge(p); ok {
		t.Fatal("an age without a contact file")
	}
	if err := writeContact(p, 3*time.Second); err != nil {
		t.Fatal(err)
	}
	age, ok := contactAge(p)
	if !ok || age < 3*time.Second || age > 13*time.Second {
		t.Fatalf("age = %v, %v; want about 3s", age, ok)
	}
	for _, bad := range []string{"", "garbage", "00000000-0000-0000-0000-000000000000 5", "x y z"} {
		if err := os.WriteFile(p, []byte(bad), 0o600); err != nil {
			t.Fatal(err)
		}
		if age, ok := contactAge(p); ok {
			t.Fatalf("record %q (another boot or damaged) gave age %v", bad, age)
		}
	}
}
