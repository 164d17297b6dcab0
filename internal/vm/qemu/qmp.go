package qemu

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"time"
)

// defaultQMPTimeout bounds every QMP exchange whose context has no
// earlier deadline: QEMU answers within milliseconds unless it is wedged.
const defaultQMPTimeout = 5 * time.Second

// qmpEvent is an asynchronous QMP event, e.g. SHUTDOWN.
type qmpEvent struct {
	Event string          `json:"event"`
	Data  json.RawMessage `json:"data"`
}

// qmpError is an error reply from QEMU.
type qmpError struct {
	Class string `json:"class"`
	Desc  string `json:"desc"`
}

func (e *qmpError) Error() string { return "qmp: " + e.Class + ": " + e.Desc }

// qmpMessage is any message QEMU sends: the greeting, a reply (return or
// error, with the id we sent) or an event.
type qmpMessage struct {
	Greeting json.RawMessage `json:"QMP"`
	Return   json.RawMessage `json:"return"`
	Error    *qmpError       `json:"error"`
	Event    string          `json:"event"`
	Data     json.RawMessage `json:"data"`
	ID       *uint64         `json:"id"`
}

// errQMPClosed is returned by calls on a closed or broken connection.
var errQMPClosed = errors.New("qmp: connection closed")

// qmpClient is a QMP (QEMU Machine Protocol) connection: JSON objects,
// one per line, over the VM's unix socket. Commands carry an id so a
// late reply to a call that timed out is recognized and dropped. One
// reader goroutine per connection routes replies to their callers and
// events to onEvent; it ends when the connection does (QEMU exited, or
// Close).
type qmpClient struct {
	conn    net.Conn
	onEvent func(qmpEvent)

	wmu sync.Mutex // one writer at a time

	mu      sync.Mutex
	nextID  uint64
	pending map[uint64]chan qmpMessage
	err     error // why the reader ended

	done chan struct{} // closed when the reader has ended
}

// dialQMP connects to the socket, reads the greeting and negotiates
// capabilities, all within ctx (or defaultQMPTimeout). onEvent runs on the
// reader goroutine and must not block.
func dialQMP(ctx context.Context, path string, onEvent func(qmpEvent)) (*qmpClient, error) {
	ctx, cancel := withDefaultTimeout(ctx)
	defer cancel()
	var dialer net.Dialer
	conn, err := dialer.DialContext(ctx, "unix", path)
	if err != nil {
		return nil, fmt.Errorf("qmp: %w", err)
	}
	dl, _ := ctx.Deadline()
	if err := conn.SetDeadline(dl); err != nil {
		conn.Close()
		return nil, fmt.Errorf("qmp: %w", err)
	}
	// Close the connection if ctx is cancelled mid-handshake, so reads
	// return at once.
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	dec := json.NewDecoder(conn)
	var greet qmpMessage
	if err := dec.Decode(&greet); err != nil {
		conn.Close()
		return nil, fmt.Errorf("qmp: read greeting: %w", handshakeErr(ctx, err))
	}
	if greet.Greeting == nil {
		conn.Close()
		return nil, errors.New("qmp: the socket did not greet with QMP (is it a QMP socket?)")
	}
	if _, err := conn.Write([]byte(`{"execute":"qmp_capabilities"}` + "\n")); err != nil {
		conn.Close()
		return nil, fmt.Errorf("qmp: negotiate capabilities: %w", handshakeErr(ctx, err))
	}
	for {
		var m qmpMessage
		if err := dec.Decode(&m); err != nil {
			conn.Close()
			return nil, fmt.Errorf("qmp: negotiate capabilities: %w", handshakeErr(ctx, err))
		}
		if m.Error != nil {
			conn.Close()
			return nil, fmt.Errorf("qmp: negotiate capabilities: %w", m.Error)
		}
		if m.Return != nil {
			break
		}
	}
	if !stop() {
		// ctx ended just now and closed the connection.
		return nil, fmt.Errorf("qmp: %w", ctx.Err())
	}
	if err := conn.SetDeadline(time.Time{}); err != nil {
		conn.Close()
		return nil, fmt.Errorf("qmp: %w", err)
	}
	c := &qmpClient{
		conn:    conn,
		onEvent: onEvent,
		pending: map[uint64]chan qmpMessage{},
		done:    make(chan struct{}),
	}
	go c.read(dec)
	return c, nil
}

// handshakeErr prefers the context's error over the read error it caused.
// The connection's deadline is the context's, and may fire first.
func handshakeErr(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return fmt.Errorf("%w (%v)", context.DeadlineExceeded, err)
	}
	return err
}

func withDefaultTimeout(ctx context.Context) (context.Context, context.CancelFunc) {
	if dl, ok := ctx.Deadline(); ok && time.Until(dl) <= defaultQMPTimeout {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, defaultQMPTimeout)
}

func (c *qmpClient) read(dec *json.Decoder) {
	var err error
	for {
		var m qmpMessage
		if err = dec.Decode(&m); err != nil {
			break
		}
		switch {
		case m.Event != "":
			if c.onEvent != nil {
				c.onEvent(qmpEvent{Event: m.Event, Data: m.Data})
			}
		case m.ID != nil:
			c.mu.Lock()
			ch, ok := c.pending[*m.ID]
			delete(c.pending, *m.ID)
			c.mu.Unlock()
			if ok {
				ch <- m // buffered: never blocks
			}
		}
	}
	c.mu.Lock()
	c.err = err
	for id, ch := range c.pending {
		close(ch)
		delete(c.pending, id)
	}
	c.mu.Unlock()
	close(c.done)
}

// execute runs one command and decodes its return value into out (if not
// nil), within ctx or defaultQMPTimeout, whichever ends first.
func (c *qmpClient) execute(ctx context.Context, cmd string, args, out any) error {
	ctx, cancel := withDefaultTimeout(ctx)
	defer cancel()

	c.mu.Lock()
	if c.err != nil || isClosed(c.done) {
		c.mu.Unlock()
		return fmt.Errorf("%s: %w", cmd, errQMPClosed)
	}
	c.nextID++
	id := c.nextID
	ch := make(chan qmpMessage, 1)
	c.pending[id] = ch
	c.mu.Unlock()
	forget := func() {
		c.mu.Lock()
		delete(c.pending, id)
		c.mu.Unlock()
	}

	req := struct {
		Execute   string `json:"execute"`
		Arguments any    `json:"arguments,omitempty"`
		ID        uint64 `json:"id"`
	}{cmd, args, id}
	b, err := json.Marshal(req)
	if err != nil {
		forget()
		return fmt.Errorf("qmp %s: %w", cmd, err)
	}
	b = append(b, '\n')
	dl, _ := ctx.Deadline()
	c.wmu.Lock()
	err = c.conn.SetWriteDeadline(dl)
	if err == nil {
		_, err = c.conn.Write(b)
	}
	c.wmu.Unlock()
	if err != nil {
		forget()
		return fmt.Errorf("qmp %s: %w", cmd, handshakeErr(ctx, err))
	}

	select {
	case m, ok := <-ch:
		if !ok {
			return fmt.Errorf("qmp %s: %w", cmd, errQMPClosed)
		}
		if m.Error != nil {
			return fmt.Errorf("qmp %s: %w", cmd, m.Error)
		}
		if out != nil && m.Return != nil {
			if err := json.Unmarshal(m.Return, out); err != nil {
				return fmt.Errorf("qmp %s: decode reply: %w", cmd, err)
			}
		}
		return nil
	case <-ctx.Done():
		forget()
		return fmt.Errorf("qmp %s: no reply: %w", cmd, ctx.Err())
	}
}

// queryStatus returns QEMU's run state ("running", "paused", "prelaunch",
// "shutdown", ...).
func (c *qmpClient) queryStatus(ctx context.Context) (string, error) {
	var st struct {
		Status string `json:"status"`
	}
	if err := c.execute(ctx, "query-status", nil, &st); err != nil {
		return "", err
	}
	return st.Status, nil
}

// Done is closed when the connection has ended.
func (c *qmpClient) Done() <-chan struct{} { return c.done }

// Close ends the connection and waits for the reader goroutine.
func (c *qmpClient) Close() error {
	err := c.conn.Close()
	<-c.done
	if errors.Is(err, net.ErrClosed) {
		err = nil
	}
	return err
}

func isClosed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}
