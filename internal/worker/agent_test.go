package worker

import (
	"errors"
	"testing"
)

func TestAgentCoreRegistersFirstAndAgainWhenForgotten(t *testing.T) {
	var c AgentCore
	if got := c.Start(); got != CallRegister {
		t.Fatalf("Start = %v, want register", got)
	}
	if got := c.UsageTick(); got != CallNone {
		t.Fatalf("usage before registration: %v", got)
	}
	c.Done(CallRegister, false, errors.New("no leader"))
	if got := c.Beat(); got != CallRegister {
		t.Fatalf("beat after a failed registration = %v, want register", got)
	}
	c.Done(CallRegister, false, nil)
	if got := c.Beat(); got != CallHeartbeat {
		t.Fatalf("beat once registered = %v, want heartbeat", got)
	}
	if got := c.UsageTick(); got != CallUsage {
		t.Fatalf("usage once registered = %v", got)
	}
	// A failed heartbeat changes nothing: the next beat heartbeats again.
	if got := c.Done(CallHeartbeat, false, errors.New("timeout")); got != CallNone {
		t.Fatalf("after a failed heartbeat: %v", got)
	}
	if got := c.Beat(); got != CallHeartbeat {
		t.Fatalf("beat after a failed heartbeat = %v", got)
	}
	// The leader does not know the worker (e.g. state restored from an
	// older snapshot): register at once.
	if got := c.Done(CallHeartbeat, false, nil); got != CallRegister {
		t.Fatalf("heartbeat answered not registered: %v, want register", got)
	}
	if got := c.Done(CallHeartbeat, true, nil); got != CallNone {
		t.Fatalf("heartbeat answered registered: %v", got)
	}
}
