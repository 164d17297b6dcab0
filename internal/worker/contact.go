package worker

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/blixard/blixard/internal/clock"
)

// Contact is a worker's record of being in touch with its cluster: the
// send time of its last successful heartbeat, on the worker's own
// monotonic clock, taken before the heartbeat left. The VM lease is
// renewed only while that time is recent (see RenewLease and docs/VMS.md,
// "Self-fencing"), so a worker cut off from the leader stops its VMs
// before the leader releases them to other workers.
type Contact struct {
	mu    sync.Mutex
	start time.Time // the process start: counts as contact until the first success
	last  time.Time // send time of the last successful heartbeat; zero: none yet
}

// NewContact returns a record for a process that started at start. Until
// its first successful heartbeat the start counts as the last contact,
// so a quickly restarted worker keeps renewing the lease of the VMs it
// adopts for the gate's length.
func NewContact(start time.Time) *Contact { return &Contact{start: start} }

// Succeeded records a successful heartbeat sent at sent. Times never go
// back: a late answer to an older heartbeat changes nothing.
func (c *Contact) Succeeded(sent time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if sent.After(c.last) {
		c.last = sent
	}
}

// Last is the send time of the last successful heartbeat, or the process
// start if there has been none.
func (c *Contact) Last() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.last.IsZero() {
		return c.start
	}
	return c.last
}

// Within says whether the last contact (Last) is less than gate before
// now.
func (c *Contact) Within(now time.Time, gate time.Duration) bool {
	return now.Sub(c.Last()) < gate
}

// RenewLease calls renew now and every period while the worker is in
// contact (c.Within(now, gate)), until ctx ends. Out of contact it skips
// renewals, so the guards stop the VMs within the lease TTL; it resumes
// at the first period after contact is back. A failed renewal is logged
// once per run of failures and retried at the next period.
func RenewLease(ctx context.Context, clk clock.Clock, every time.Duration, c *Contact, gate time.Duration, renew func() error, log *slog.Logger) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	t := clk.NewTicker(every)
	defer t.Stop()
	failing, cut := false, false
	for {
		if now := clk.Now(); c.Within(now, gate) {
			if cut {
				log.Info("back in contact with the cluster; renewing the VM lease again")
				cut = false
			}
			if err := renew(); err != nil {
				if !failing {
					log.Error("cannot renew the VM lease", "err", err)
				}
				failing = true
			} else {
				failing = false
			}
		} else if !cut {
			log.Warn("no successful heartbeat to the leader recently: not renewing the VM lease, so this worker's VMs stop before the cluster runs them elsewhere",
				"last_contact_ago", now.Sub(c.Last()), "gate", gate)
			cut = true
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C():
		}
	}
}
