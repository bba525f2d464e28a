package metrics

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Handler serves GET /metrics (the Prometheus text format) and GET /healthz
// (JSON: 200 when healthy, else 503 with the reasons).
func (m *Metrics) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{
		Registry:      m.reg, // counts its own errors as promhttp_metric_handler_errors_total
		ErrorHandling: promhttp.ContinueOnError,
	}))
	mux.HandleFunc("GET /healthz", m.serveHealth)
	return mux
}

func (m *Metrics) serveHealth(w http.ResponseWriter, _ *http.Request) {
	h := m.Health()
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	if !h.OK() {
		w.WriteHeader(http.StatusServiceUnavailable)
	}
	_ = json.NewEncoder(w).Encode(h)
}

// Server is the HTTP endpoint of metrics.listen.
type Server struct {
	ln  net.Listener
	srv *http.Server
}

// Listen binds addr (host:port) for h. It fails at once when the address
// cannot be bound, so a bad metrics.listen stops the guard at its start.
func Listen(addr string, h http.Handler) (*Server, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	return &Server{ln: ln, srv: &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       2 * time.Minute,
	}}, nil
}

// Addr is the address bound (with the real port when it was 0).
func (s *Server) Addr() net.Addr { return s.ln.Addr() }

// Serve serves until ctx ends, then shuts down within a second.
func (s *Server) Serve(ctx context.Context) error {
	stop := context.AfterFunc(ctx, func() {
		sctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		if s.srv.Shutdown(sctx) != nil {
			_ = s.srv.Close()
		}
	})
	defer stop()
	err := s.srv.Serve(s.ln)
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

// Close closes the listener and every connection (a start that fails after
// Listen).
func (s *Server) Close() error {
	err := s.srv.Close()
	_ = s.ln.Close()
	return err
}
