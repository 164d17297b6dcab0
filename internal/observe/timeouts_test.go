package observe

import (
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"testing"
	"time"
)

// An idle or trickling client cannot pin a node's HTTP server: the
// header must arrive within ReadHeaderTimeout, idle keep-alives end.
func TestHTTPServerDropsSlowAndIdleClients(t *testing.T) {
	h, err := Listen("127.0.0.1:0", http.NotFoundHandler(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if h.srv.ReadHeaderTimeout <= 0 || h.srv.IdleTimeout <= 0 || h.srv.ReadTimeout <= 0 || h.srv.MaxHeaderBytes <= 0 {
		t.Fatalf("production limits unset: %+v", h.srv)
	}
	h.srv.ReadHeaderTimeout = 100 * time.Millisecond
	h.srv.ReadTimeout = 0 // so only the header timeout can end the connection
	done := make(chan error, 1)
	go func() { done <- h.Serve() }()
	defer func() {
		h.Shutdown(time.Second)
		if serr := <-done; serr != nil {
			t.Errorf("serve: %v", serr)
		}
	}()
	c, err := net.Dial("tcp", h.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err = c.Write([]byte("GET / HTTP/1.1\r\nHost: x\r\n")); err != nil { // never finished
		t.Fatal(err)
	}
	// The deadline only bounds the test; the server must close first.
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, err = io.ReadAll(c)
	if errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatal("a client that never finished its header still held the connection after 10 s")
	}
}
