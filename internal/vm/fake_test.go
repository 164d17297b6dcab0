package vm

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"
)

func TestFakeLifecycle(t *testing.T) {
	ctx := context.Background()
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	host := NewFakeHost(FakeOptions{Now: func() time.Time { return now }})
	d := host.NewDriver()
	if _, err := d.Start(ctx, Spec{ID: "bad"}); !errors.Is(err, ErrInvalidSpec) {
		t.Fatalf("invalid spec: %v", err)
	}
	id, err := d.Start(ctx, validSpec())
	if err != nil {
		t.Fatal(err)
	}
	if _, startErr := d.Start(ctx, validSpec()); !errors.Is(startErr, ErrExists) {
		t.Fatalf("duplicate: %v", startErr)
	}
	if readyErr := d.WaitReady(ctx, id); readyErr != nil {
		t.Fatal(readyErr)
	}
	st, err := d.Status(ctx, id)
	if err != nil || st.State != StateRunning || st.PID == 0 || !st.StartedAt.Equal(now) || !st.ReadyAt.Equal(now) {
		t.Fatalf("status = %+v, %v", st, err)
	}
	w := d.Wait(id)
	if err := d.Stop(ctx, id); err != nil {
		t.Fatal(err)
	}
	if e := <-w; !e.Clean() || e.ID != id {
		t.Fatalf("exit = %+v", e)
	}
	if e := <-d.Wait(id); !e.Clean() {
		t.Fatalf("Wait after exit = %+v", e)
	}
	// Restart under the same ID, then the guest's command exits.
	if _, err := d.Start(ctx, validSpec()); err != nil {
		t.Fatal(err)
	}
	w = d.Wait(id)
	if err := host.GuestExit(id, 3); err != nil {
		t.Fatal(err)
	}
	if e := <-w; !e.Clean() || e.GuestExitCode != 3 {
		t.Fatalf("guest exit = %+v", e)
	}
	if _, err := d.Status(ctx, "nope"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("unknown: %v", err)
	}
	if e := <-d.Wait("nope"); !errors.Is(e.Err, ErrNotFound) {
		t.Fatalf("Wait unknown = %+v", e)
	}
}

func TestFakeCrashKillAndManualReadiness(t *testing.T) {
	ctx := context.Background()
	host := NewFakeHost(FakeOptions{ManualReady: true})
	d := host.NewDriver()
	spec := validSpec()
	if _, err := d.Start(ctx, spec); err != nil {
		t.Fatal(err)
	}
	short, cancel := context.WithCancel(ctx)
	cancel()
	if err := d.WaitReady(short, spec.ID); !errors.Is(err, context.Canceled) {
		t.Fatalf("WaitReady before MarkReady = %v", err)
	}
	if st, _ := d.Status(ctx, spec.ID); st.State != StateStarting {
		t.Fatalf("state = %s", st.State)
	}
	if err := host.Crash(spec.ID, ""); err != nil {
		t.Fatal(err)
	}
	if err := d.WaitReady(ctx, spec.ID); !errors.Is(err, ErrExited) {
		t.Fatalf("WaitReady after a crash = %v", err)
	}
	if e := <-d.Wait(spec.ID); e.State != StateFailed || e.Signal != "SIGKILL" {
		t.Fatalf("crash = %+v", e)
	}
	if err := host.MarkReady(spec.ID); !errors.Is(err, ErrNotFound) {
		t.Fatalf("MarkReady on a dead VM = %v", err)
	}

	host.FailNextStart(errors.New("no memory"))
	if _, err := d.Start(ctx, spec); err == nil {
		t.Fatal("injected start failure did not happen")
	}
	if _, err := d.Start(ctx, spec); err != nil {
		t.Fatal(err)
	}
	if err := d.Kill(spec.ID); err != nil {
		t.Fatal(err)
	}
	if e := <-d.Wait(spec.ID); e.State != StateFailed || e.Clean() {
		t.Fatalf("kill = %+v", e)
	}
}

func TestFakeRestartAdoptsRunningVMs(t *testing.T) {
	ctx := context.Background()
	host := NewFakeHost(FakeOptions{})
	d1 := host.NewDriver()
	for _, id := range []ID{"b", "a", "gone"} {
		s := validSpec()
		s.ID = id
		if _, err := d1.Start(ctx, s); err != nil {
			t.Fatal(err)
		}
	}
	w := d1.Wait("a")
	if err := d1.Close(); err != nil {
		t.Fatal(err)
	}
	if e := <-w; !errors.Is(e.Err, ErrClosed) {
		t.Fatalf("Wait across Close = %+v", e)
	}
	if _, err := d1.Status(ctx, "a"); !errors.Is(err, ErrClosed) {
		t.Fatalf("closed driver: %v", err)
	}
	// While no driver watches, one VM dies.
	if err := host.Crash("gone", "oom"); err != nil {
		t.Fatal(err)
	}
	d2 := host.NewDriver()
	s := validSpec()
	s.ID = "a"
	if _, err := d2.Start(ctx, s); !errors.Is(err, ErrExists) {
		t.Fatalf("Start of a running, unadopted VM = %v", err)
	}
	ids, err := d2.Recover(ctx)
	if err != nil || !slices.Equal(ids, []ID{"a", "b"}) {
		t.Fatalf("Recover = %v, %v", ids, err)
	}
	if st, _ := d2.Status(ctx, "a"); !st.Adopted || st.State != StateRunning {
		t.Fatalf("adopted = %+v", st)
	}
	if e := <-d2.Wait("gone"); e.State != StateFailed || e.Reason != "oom" {
		t.Fatalf("VM that died unwatched = %+v", e)
	}
	if got := host.Running(); !slices.Equal(got, []ID{"a", "b"}) {
		t.Fatalf("running = %v", got)
	}
	if c := d2.Capabilities(); c.Driver != "fake" || !c.Recover {
		t.Fatalf("caps = %+v", c)
	}
}
