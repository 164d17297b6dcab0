package qemu

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// fakeQMP is a scripted QMP server on a unix socket for one client: it
// greets, accepts qmp_capabilities, then hands each later command to
// handle, which writes whatever replies and events it likes.
type fakeQMP struct {
	path   string
	l      net.Listener
	handle func(w *bufio.Writer, cmd string, id json.RawMessage)
	greet  bool // send the greeting (false: a mute socket)
	wg     sync.WaitGroup

	mu     sync.Mutex
	conn   net.Conn
	closed bool
}

func newFakeQMP(t *testing.T, greet bool, handle func(w *bufio.Writer, cmd string, id json.RawMessage)) *fakeQMP {
	t.Helper()
	path := filepath.Join(t.TempDir(), "qmp.sock")
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeQMP{path: path, l: l, handle: handle, greet: greet}
	f.wg.Add(1)
	go f.serve()
	t.Cleanup(f.close)
	return f
}

// close stops the server like a dying QEMU: the socket goes away and the
// client's connection ends.
func (f *fakeQMP) close() {
	f.mu.Lock()
	f.closed = true
	if f.conn != nil {
		f.conn.Close()
	}
	f.mu.Unlock()
	f.l.Close()
	f.wg.Wait()
}

func (f *fakeQMP) serve() {
	defer f.wg.Done()
	c, err := f.l.Accept()
	if err != nil {
		return
	}
	f.mu.Lock()
	f.conn = c
	if f.closed {
		c.Close()
	}
	f.mu.Unlock()
	defer c.Close()
	w := bufio.NewWriter(c)
	if f.greet {
		w.WriteString(`{"QMP": {"version": {"qemu": {"major": 7}}, "capabilities": []}}` + "\r\n")
		w.Flush()
	}
	dec := json.NewDecoder(c)
	for {
		var req struct {
			Execute string          `json:"execute"`
			ID      json.RawMessage `json:"id"`
		}
		if err := dec.Decode(&req); err != nil {
			return
		}
		if req.Execute == "qmp_capabilities" {
			w.WriteString(`{"return": {}}` + "\r\n")
		} else {
			f.handle(w, req.Execute, req.ID)
		}
		w.Flush()
	}
}

func reply(w *bufio.Writer, id json.RawMessage, ret string) {
	w.WriteString(`{"return": ` + ret + `, "id": ` + string(id) + "}\r\n")
}

func TestQMPHandshakeCommandsAndEvents(t *testing.T) {
	events := make(chan qmpEvent, 4)
	f := newFakeQMP(t, true, func(w *bufio.Writer, cmd string, id json.RawMessage) {
		switch cmd {
		case "query-status":
			// An event may arrive before the reply; both are routed.
			w.WriteString(`{"event": "RESUME", "data": {}, "timestamp": {"seconds": 1, "microseconds": 2}}` + "\r\n")
			reply(w, id, `{"status": "running", "running": true}`)
		case "system_powerdown":
			reply(w, id, `{}`)
			w.WriteString(`{"event": "SHUTDOWN", "data": {"guest": true, "reason": "guest-shutdown"}}` + "\r\n")
		default:
			w.WriteString(`{"error": {"class": "CommandNotFound", "desc": "The command ` + cmd + ` has not been found"}, "id": ` + string(id) + "}\r\n")
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := dialQMP(ctx, f.path, func(e qmpEvent) { events <- e })
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	st, err := c.queryStatus(ctx)
	if err != nil || st != "running" {
		t.Fatalf("query-status = %q, %v", st, err)
	}
	if executeErr := c.execute(ctx, "system_powerdown", nil, nil); executeErr != nil {
		t.Fatal(executeErr)
	}
	err = c.execute(ctx, "nope", nil, nil)
	var qe *qmpError
	if !errors.As(err, &qe) || qe.Class != "CommandNotFound" {
		t.Fatalf("unknown command = %v, want a CommandNotFound qmpError", err)
	}
	if e := <-events; e.Event != "RESUME" {
		t.Fatalf("first event = %+v", e)
	}
	e := <-events
	var sd shutdownEvent
	if e.Event != "SHUTDOWN" || json.Unmarshal(e.Data, &sd) != nil || !sd.Guest || sd.Reason != "guest-shutdown" {
		t.Fatalf("second event = %+v", e)
	}
}

func TestQMPCallWithoutReplyTimesOutAndLateReplyIsDropped(t *testing.T) {
	var mu sync.Mutex
	var held json.RawMessage
	f := newFakeQMP(t, true, func(w *bufio.Writer, cmd string, id json.RawMessage) {
		mu.Lock()
		defer mu.Unlock()
		switch cmd {
		case "slow":
			held = id // answered later, after the caller gave up
		case "query-status":
			if held != nil {
				reply(w, held, `{"status": "stale"}`)
			}
			reply(w, id, `{"status": "running"}`)
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := dialQMP(ctx, f.path, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	short, cancelShort := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancelShort()
	if err := c.execute(short, "slow", nil, nil); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("slow = %v, want DeadlineExceeded", err)
	}
	if st, err := c.queryStatus(ctx); err != nil || st != "running" {
		t.Fatalf("after a timed-out call, query-status = %q, %v; want running", st, err)
	}
}

func TestQMPDialGivesUpOnAMuteSocket(t *testing.T) {
	f := newFakeQMP(t, false, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if _, err := dialQMP(ctx, f.path, nil); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("dial = %v, want DeadlineExceeded", err)
	}
}

func TestQMPCallsFailOnceTheServerIsGone(t *testing.T) {
	got := make(chan struct{}, 1)
	f := newFakeQMP(t, true, func(*bufio.Writer, string, json.RawMessage) { got <- struct{}{} })
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := dialQMP(ctx, f.path, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	result := make(chan error, 1)
	go func() { result <- c.execute(ctx, "query-status", nil, nil) }()
	<-got
	f.close() // QEMU died mid-call
	if err := <-result; !errors.Is(err, errQMPClosed) {
		t.Fatalf("call across the close = %v, want errQMPClosed", err)
	}
	<-c.Done()
	if err := c.execute(ctx, "query-status", nil, nil); !errors.Is(err, errQMPClosed) || !strings.Contains(err.Error(), "query-status") {
		t.Fatalf("call after the close = %v", err)
	}
}
