package observe

import (
	"context"
	"crypto/tls"
	"embed"
	"encoding/json"
	"errors"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
)

//go:embed dashboard
var dashboardFS embed.FS

// contentSecurity forbids everything the dashboard does not need: no
// inline or foreign scripts, styles or connections.
const contentSecurity = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"

// Handler serves /metrics, /healthz, /readyz, /api/overview and the
// dashboard (/, /dashboard.js, /dashboard.css). Read-only: anything but
// GET or HEAD is refused.
func Handler(src Source, m *Metrics, log *slog.Logger) http.Handler {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(m.Registry, promhttp.HandlerOpts{
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
		ErrorHandling:     promhttp.ContinueOnError,
		EnableOpenMetrics: true,
	}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		plain(w, http.StatusOK, "ok")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), scrapeTimeout)
		defer cancel()
		rd := CheckReady(ctx, src)
		code := http.StatusOK
		if !rd.Ready {
			code = http.StatusServiceUnavailable
		}
		if r.URL.Query().Get("format") == "json" {
			writeJSON(w, code, rd, log)
			return
		}
		plain(w, code, rd.Reason)
	})
	mux.HandleFunc("GET /api/overview", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), scrapeTimeout)
		defer cancel()
		writeJSON(w, http.StatusOK, buildOverview(ctx, src, m.tables.get(), time.Now()), log)
	})
	static, _ := fs.Sub(dashboardFS, "dashboard")
	files := http.FileServerFS(static)
	for _, p := range []string{"/{$}", "/dashboard.js", "/dashboard.css"} {
		mux.Handle("GET "+p, files)
	}
	return securityHeaders(mux)
}

func securityHeaders(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hd := w.Header()
		hd.Set("Content-Security-Policy", contentSecurity)
		hd.Set("X-Content-Type-Options", "nosniff")
		hd.Set("Referrer-Policy", "no-referrer")
		hd.Set("Cache-Control", "no-store")
		h.ServeHTTP(w, r)
	})
}

func plain(w http.ResponseWriter, code int, line string) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.WriteHeader(code)
	_, _ = w.Write([]byte(line + "\n"))
}

func writeJSON(w http.ResponseWriter, code int, v any, log *slog.Logger) {
	b, err := json.Marshal(v)
	if err != nil {
		log.Warn("encoding an HTTP answer", "err", err)
		plain(w, http.StatusInternalServerError, "cannot encode the answer")
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_, _ = w.Write(append(b, '\n'))
}

// HTTPServer is a bound HTTP listener and its server. The owner calls
// Serve on a goroutine it waits for, and Shutdown to end it.
type HTTPServer struct {
	srv *http.Server
	lis net.Listener
}

// Listen binds addr now, so a port in use fails start-up, not later.
func Listen(addr string, h http.Handler, log *slog.Logger) (*HTTPServer, error) {
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &HTTPServer{lis: lis, srv: &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelDebug),
	}}, nil
}

// ServeTLS makes the server speak HTTPS with cfg (call before Serve).
func (s *HTTPServer) ServeTLS(cfg *tls.Config) { s.lis = tls.NewListener(s.lis, cfg) }

// Addr is the bound address (useful with port 0).
func (s *HTTPServer) Addr() string { return s.lis.Addr().String() }

// Serve serves until Shutdown; it returns nil after a Shutdown.
func (s *HTTPServer) Serve() error {
	if err := s.srv.Serve(s.lis); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// Shutdown stops accepting, waits up to timeout for requests in flight,
// then closes every connection. It also closes a listener never served.
func (s *HTTPServer) Shutdown(timeout time.Duration) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	if err := s.srv.Shutdown(ctx); err != nil {
		_ = s.srv.Close()
	}
	_ = s.lis.Close()
}
