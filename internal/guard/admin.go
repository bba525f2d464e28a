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
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/astguard/astguard/internal/action/bans"
	"github.com/astguard/astguard/internal/ami"
	"github.com/astguard/astguard/internal/config"
	"github.com/astguard/astguard/internal/fsafe"
	"github.com/astguard/astguard/internal/incident"
	"github.com/astguard/astguard/internal/policy"
)

// The admin endpoint is HTTP over a unix socket only root can open: the
// daemon owns the bans and the incidents, and `guard bans`, `guard
// unblock`, `guard incidents` and `guard release` ask it.
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
	mux.HandleFunc("GET /incidents", s.listIncidents)
	mux.HandleFunc("POST /release", s.release)
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
	lifted, err := s.g.bans.Lift(r.Context(), addr.Unmap())
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	for _, b := range lifted {
		s.g.log.Warn().Str("component", "admin").Str("ip", addr.String()).Str("ban", b.Target()).Msg("ban lifted by the administrator")
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(lifted)
}

func (s *adminServer) listIncidents(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(s.g.book.List(time.Now()))
}

// Released is what `guard release` reports.
type Released struct {
	// Incident is the incident released, as it is now (closed).
	Incident incident.Record `json:"incident"`
	// Warning says why the release is not in the state file yet: it
	// holds in the running guard all the same.
	Warning string `json:"warning,omitempty"`
}

func (s *adminServer) release(w http.ResponseWriter, r *http.Request) {
	key, err := ParseExtension(r.URL.Query().Get("ext"))
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	rec, err := s.g.book.Release(key, time.Now())
	if errors.Is(err, incident.ErrNotOpen) {
		http.Error(w, "no open incident of "+key.String(), http.StatusNotFound)
		return
	}
	out := Released{Incident: rec}
	switch {
	case err != nil:
		out.Warning = "released, but not saved yet (" + err.Error() + "): the guard saves it again within a second; until then a restart would stop the extension again"
	case s.g.cfg.Load().Mode != config.ModeEnforce:
		out.Warning = "observe mode writes nothing: the release holds while this guard runs, and is saved when it enforces"
	}
	ev := s.g.log.Warn().Str("component", "admin").Str("incident", rec.ID).Str("tech", key.Tech.String()).Str("extension", key.Name).Str("rule", rec.Rule.String())
	if err != nil {
		ev = ev.AnErr("state_error", err)
	}
	ev.Msg("incident released by the administrator: the extension's new calls are no longer hung up")
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(out)
}

// ParseExtension reads an extension as `guard release` takes it:
// TECH/NAME (SIP/200, PJSIP/300; the technology in any case), a name the
// guard would act on (ami.ValidName).
func ParseExtension(s string) (policy.Key, error) {
	tech, name, ok := strings.Cut(s, "/")
	t, known := ami.ParseTech(tech)
	if !ok || !known || !ami.ValidName(name) {
		return policy.Key{}, fmt.Errorf("%q is not an extension: write TECH/NAME, e.g. SIP/200 or PJSIP/300", s)
	}
	return policy.ExtensionKey(t, name), nil
}

// IncidentsOffline lists the incidents of the state file at path while no
// guard runs, as a guard started at now with the quiet time quiet would
// see them: those whose quiet time passed are closed, an action that was
// running when the guard stopped shows as skipped.
func IncidentsOffline(path string, quiet time.Duration, now time.Time) (incident.Listing, error) {
	st, err := bans.ReadState(path)
	if err != nil {
		return incident.Listing{}, err
	}
	book, err := incident.New(incident.Options{Quiet: quiet, Mode: policy.Observe})
	if err != nil {
		return incident.Listing{}, err
	}
	if err := book.Load(st.Incidents, now); err != nil {
		return incident.Listing{}, err
	}
	return book.List(now), nil
}

// ReleaseOffline releases the open incident of key in the state file at
// path while no guard runs: under the state file's lock (bans.ErrLocked
// if a guard holds it), as the guard's own release would, so that the
// guard, when it starts, does not hang up the extension's calls. It
// returns incident.ErrNotOpen when the extension has no open incident.
func ReleaseOffline(path string, quiet time.Duration, key policy.Key, now time.Time) (incident.Record, error) {
	var rec incident.Record
	err := bans.EditIncidentsOffline(path, func(raw json.RawMessage) (json.RawMessage, error) {
		var saved savedIncidents
		book, err := incident.New(incident.Options{Quiet: quiet, Mode: policy.Enforce, Store: &saved})
		if err != nil {
			return nil, err
		}
		if err := book.Load(raw, now); err != nil {
			return nil, err
		}
		if rec, err = book.Release(key, now); err != nil {
			return nil, err
		}
		return saved.raw, nil
	})
	return rec, err
}

// savedIncidents is the incident.Store of ReleaseOffline: it keeps what
// the book saves last.
type savedIncidents struct{ raw json.RawMessage }

func (s *savedIncidents) SaveIncidents(raw json.RawMessage) error {
	s.raw = raw
	return nil
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

// Unblock asks the daemon to lift the bans covering addr (its own, and
// that of a network holding it) and returns them.
func (a *AdminClient) Unblock(ctx context.Context, addr netip.Addr) ([]bans.Ban, error) {
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, "http://guard/unblock?addr="+addr.String(), nil)
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
	return out, json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&out)
}

// Incidents lists the daemon's incidents.
func (a *AdminClient) Incidents(ctx context.Context) (incident.Listing, error) {
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://guard/incidents", nil)
	resp, err := a.c.Do(req)
	if err != nil {
		return incident.Listing{}, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return incident.Listing{}, fmt.Errorf("guard answered %s: %s", resp.Status, b)
	}
	var out incident.Listing
	return out, json.NewDecoder(resp.Body).Decode(&out)
}

// Release asks the daemon to release the open incident of key: its
// extension's new calls are no longer hung up. No open incident is an
// error wrapping incident.ErrNotOpen.
func (a *AdminClient) Release(ctx context.Context, key policy.Key) (Released, error) {
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, "http://guard/release?ext="+url.QueryEscape(key.String()), nil)
	resp, err := a.c.Do(req)
	if err != nil {
		return Released{}, err
	}
	defer resp.Body.Close()
	switch resp.StatusCode {
	case http.StatusOK:
	case http.StatusNotFound:
		return Released{}, fmt.Errorf("%w of %s", incident.ErrNotOpen, key)
	default:
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return Released{}, fmt.Errorf("guard answered %s: %s", resp.Status, b)
	}
	var out Released
	return out, json.NewDecoder(resp.Body).Decode(&out)
}
