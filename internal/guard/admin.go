package guard

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"time"

	"github.com/astguard/astguard/internal/action/bans"
	"github.com/astguard/astguard/internal/fsafe"
)

// The admin endpoint is HTTP over a unix socket only root can open: the
// daemon owns the bans, and `guard bans` / `guard unblock` ask it.
type adminServer struct {
	g    *Guard
	ln   net.Listener
	path string
	srv  *http.Server
}

// listenAdmin makes the admin socket at path, mode 0600, in a directory made
// 0700 when missing. A socket left by a killed guard is replaced; anything
// else at the path (a file, a symlink) stops the start.
func (g *Guard) listenAdmin(path string) (*adminServer, error) {
	if err := fsafe.MkdirPrivate(filepath.Dir(path)); err != nil {
		return nil, fmt.Errorf("response.admin_socket: %w", err)
	}
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode()&os.ModeSocket == 0 {
			what := "is not a socket"
			if fi.Mode()&os.ModeSymlink != 0 {
				what = "is a symlink"
			}
			return nil, fmt.Errorf("response.admin_socket: %s exists and %s: move it away", path, what)
		}
		if c, err := net.DialTimeout("unix", path, 200*time.Millisecond); err == nil {
			c.Close()
			return nil, fmt.Errorf("admin socket %s is in use: is another guard running?", path)
		}
		_ = os.Remove(path)
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, err
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, err
	}
	s := &adminServer{g: g, ln: ln, path: path}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /bans", s.listBans)
	mux.HandleFunc("POST /unblock", s.unblock)
	s.srv = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	return s, nil
}

func (s *adminServer) serve(ctx context.Context) error {
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_ = s.srv.Shutdown(sctx)
	}()
	err := s.srv.Serve(s.ln)
	_ = os.Remove(s.path)
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

func (s *adminServer) listBans(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(s.g.bans.List())
}

func (s *adminServer) unblock(w http.ResponseWriter, r *http.Request) {
	addr, err := netip.ParseAddr(r.URL.Query().Get("addr"))
	if err != nil {
		http.Error(w, "addr is not an IP address", http.StatusBadRequest)
		return
	}
	if err := s.g.bans.Unban(r.Context(), addr.Unmap()); err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	s.g.log.Warn().Str("component", "admin").Str("ip", addr.String()).Msg("ban lifted by the administrator")
	w.WriteHeader(http.StatusNoContent)
}

// AdminClient talks to a running guard's admin socket.
type AdminClient struct{ c *http.Client }

// ErrNoDaemon means no guard answers on the socket.
var ErrNoDaemon = errors.New("no running guard answers on the admin socket")

// NewAdminClient returns a client for the socket at path. Before every
// connection it checks what sits at path (fsafe.CheckSocket): a socket, not
// a symlink or a file, owned by root or the caller, not writable by others.
// Anything else is refused with an error wrapping fsafe.ErrUnsafe, never
// talked to: it may be another user's stand-in for the guard. No socket, or
// one nobody listens on, is ErrNoDaemon.
func NewAdminClient(path string) *AdminClient {
	return &AdminClient{c: &http.Client{
		Timeout: 5 * time.Second,
		Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			if err := fsafe.CheckSocket(path); errors.Is(err, fs.ErrNotExist) {
				return nil, fmt.Errorf("%w: %v", ErrNoDaemon, err)
			} else if err != nil {
				return nil, fmt.Errorf("admin socket: %w; refusing to talk to it", err)
			}
			var d net.Dialer
			c, err := d.DialContext(ctx, "unix", path)
			if err != nil {
				return nil, fmt.Errorf("%w: %v", ErrNoDaemon, err)
			}
			return c, nil
		}},
	}}
}

// Bans lists the daemon's bans.
func (a *AdminClient) Bans(ctx context.Context) ([]bans.Ban, error) {
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://guard/bans", nil)
	resp, err := a.c.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return nil, fmt.Errorf("guard answered %s: %s", resp.Status, b)
	}
	var out []bans.Ban
	return out, json.NewDecoder(resp.Body).Decode(&out)
}

// Unblock asks the daemon to lift the ban of addr.
func (a *AdminClient) Unblock(ctx context.Context, addr netip.Addr) error {
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, "http://guard/unblock?addr="+addr.String(), nil)
	resp, err := a.c.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusNoContent {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return fmt.Errorf("guard answered %s: %s", resp.Status, b)
	}
	return nil
}
