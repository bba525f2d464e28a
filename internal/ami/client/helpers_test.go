package client_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/astguard/astguard/internal/ami"
	"github.com/astguard/astguard/internal/ami/amitest"
	"github.com/astguard/astguard/internal/ami/client"
	"github.com/astguard/astguard/internal/testenv"
)

// logSink collects a Client's JSON log lines.
type logSink struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *logSink) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

// lines returns the log lines with the given message, parsed.
func (s *logSink) lines(msg string) []map[string]any {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []map[string]any
	sc := bufio.NewScanner(bytes.NewReader(s.b.Bytes()))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var l map[string]any
		if json.Unmarshal(sc.Bytes(), &l) == nil && l["message"] == msg {
			out = append(out, l)
		}
	}
	return out
}

func (s *logSink) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// startServer starts a fake Asterisk 20 that answers at once.
func startServer(t *testing.T, opts amitest.Options) *amitest.Server {
	t.Helper()
	if opts.LoginFailDelay == 0 {
		opts.LoginFailDelay = time.Millisecond
	}
	srv, err := amitest.Start(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	return srv
}

// newClient starts a Client on srv's address with the fake's credentials
// (opts fills in the rest) and closes it at the end of the test.
func newClient(t *testing.T, addr string, opts client.Options) (*client.Client, *logSink) {
	t.Helper()
	logs := &logSink{}
	opts.Address = addr
	if opts.Username == "" {
		opts.Username = amitest.DefaultUsername
	}
	if opts.Secret == "" {
		opts.Secret = amitest.DefaultSecret
	}
	if opts.ReconnectInterval == 0 {
		opts.ReconnectInterval = 20 * time.Millisecond
	}
	if opts.ReconnectMax == 0 {
		opts.ReconnectMax = 200 * time.Millisecond
	}
	opts.Logger = zerolog.New(logs)
	c, err := client.New(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c, logs
}

// waitFor polls cond until it holds or 10 s pass.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	testenv.WaitFor(t, what, 10*time.Second, cond)
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	t.Cleanup(cancel)
	return c
}

// actions returns the names of the actions srv received.
func actionNames(srv *amitest.Server) []string {
	var out []string
	for _, a := range srv.Actions() {
		out = append(out, a.Name)
	}
	return out
}

// header returns the value of key in an action's headers.
func header(a amitest.Action, key string) (string, bool) {
	for _, h := range a.Headers {
		if strings.EqualFold(h[0], key) {
			return h[1], true
		}
	}
	return "", false
}

// wireRecorder wraps the dialled connection and keeps every byte the
// client writes.
type wireRecorder struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (w *wireRecorder) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	return &recordedConn{Conn: c, w: w}, nil
}

func (w *wireRecorder) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.String()
}

type recordedConn struct {
	net.Conn
	w *wireRecorder
}

func (c *recordedConn) Write(p []byte) (int, error) {
	c.w.mu.Lock()
	c.w.b.Write(p)
	c.w.mu.Unlock()
	return c.Conn.Write(p)
}

// events collects what a Client's Handler receives (copied).
type events struct {
	mu   sync.Mutex
	msgs []ami.Response
}

func (e *events) handle(m *ami.Message, _ time.Time) {
	r := m.Response()
	e.mu.Lock()
	e.msgs = append(e.msgs, r)
	e.mu.Unlock()
}

func (e *events) names() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	var out []string
	for _, m := range e.msgs {
		out = append(out, m.Get("Event"))
	}
	return out
}

func (e *events) all() []ami.Response {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]ami.Response(nil), e.msgs...)
}
