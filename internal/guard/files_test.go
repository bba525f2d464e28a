package guard

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/astguard/astguard/internal/config"
	"github.com/astguard/astguard/internal/fsafe"
)

// writeMode writes content to path with exactly mode (past the umask).
func writeMode(t *testing.T, path, content string, mode os.FileMode) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, mode); err != nil {
		t.Fatal(err)
	}
}

// Run refuses to start with a secrets file it could not write safely, before
// it logs in anywhere.
func TestRunRefusesUnsafeSecretsFile(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	cfg := config.Default()
	cfg.AMI.Secret = "guardpass"
	cfg.AMI.Address = "192.0.2.1:5038" // never dialled: Run stops first
	cfg.Response.Firewall = config.FirewallDryRun
	cfg.Response.StateFile = filepath.Join(dir, "bans.json")
	cfg.Response.AdminSocket = filepath.Join(dir, "admin.sock")
	cfg.Response.SecretsFile = filepath.Join(dir, "secrets.jsonl")
	if err := os.Symlink("/etc/passwd", cfg.Response.SecretsFile); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err := Run(ctx, Options{Config: cfg, Logger: zerolog.Nop()})
	if !errors.Is(err, fsafe.ErrUnsafe) {
		t.Fatalf("Run = %v, want an error wrapping fsafe.ErrUnsafe", err)
	}
}

// fakeDaemon serves an empty ban list on a unix socket at path with mode,
// counting the requests it gets.
func fakeDaemon(t *testing.T, path string, mode os.FileMode) *atomic.Int32 {
	t.Helper()
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, mode); err != nil {
		t.Fatal(err)
	}
	var hits atomic.Int32
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		hits.Add(1)
		_, _ = w.Write([]byte("[]"))
	})}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { srv.Close() })
	return &hits
}

// The admin client talks only to a socket that is what the guard makes:
// a socket at the path itself, owned by root or the caller, not writable
// by others. A stand-in is refused before a byte goes to it.
func TestAdminClientChecksTheSocket(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	dir := t.TempDir()

	good := filepath.Join(dir, "admin.sock")
	hits := fakeDaemon(t, good, 0o600)
	if _, err := NewAdminClient(good).Bans(ctx); err != nil || hits.Load() != 1 {
		t.Fatalf("a 0600 socket: err = %v, requests %d", err, hits.Load())
	}

	// A symlink at the configured path to a socket elsewhere.
	elsewhere := filepath.Join(t.TempDir(), "stand-in.sock")
	hits = fakeDaemon(t, elsewhere, 0o600)
	link := filepath.Join(dir, "link.sock")
	if err := os.Symlink(elsewhere, link); err != nil {
		t.Fatal(err)
	}
	// A socket any user may have made and listen on.
	open := filepath.Join(dir, "open.sock")
	openHits := fakeDaemon(t, open, 0o666)
	// A regular file.
	file := filepath.Join(dir, "file.sock")
	writeMode(t, file, "", 0o600)

	for name, path := range map[string]string{"symlink": link, "mode 0666": open, "regular file": file} {
		_, err := NewAdminClient(path).Bans(ctx)
		if !errors.Is(err, fsafe.ErrUnsafe) || errors.Is(err, ErrNoDaemon) {
			t.Errorf("%s: Bans err = %v, want fsafe.ErrUnsafe and not ErrNoDaemon (no fallback to offline mode)", name, err)
		}
		if _, err := NewAdminClient(path).Unblock(ctx, netip.MustParseAddr("192.0.2.7")); !errors.Is(err, fsafe.ErrUnsafe) {
			t.Errorf("%s: Unblock err = %v, want fsafe.ErrUnsafe", name, err)
		}
	}
	if hits.Load() != 0 || openHits.Load() != 0 {
		t.Errorf("a stand-in got requests: through the symlink %d, the open socket %d", hits.Load(), openHits.Load())
	}

	// No socket, or a stale one nobody listens on: no daemon.
	if _, err := NewAdminClient(filepath.Join(dir, "missing.sock")).Bans(ctx); !errors.Is(err, ErrNoDaemon) {
		t.Errorf("missing socket: err = %v, want ErrNoDaemon", err)
	}
	stale := filepath.Join(dir, "stale.sock")
	ln, err := net.Listen("unix", stale)
	if err != nil {
		t.Fatal(err)
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	ln.Close()
	if err := os.Chmod(stale, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := NewAdminClient(stale).Bans(ctx); !errors.Is(err, ErrNoDaemon) {
		t.Errorf("stale socket: err = %v, want ErrNoDaemon", err)
	}
}

// The daemon makes its socket's missing directory 0700 and the socket 0600;
// it replaces a stale socket of a killed guard, and refuses to start over
// anything else at the path.
func TestListenAdminPaths(t *testing.T) {
	t.Parallel()
	g := &Guard{}
	dir := filepath.Join(t.TempDir(), "run", "astguard")
	path := filepath.Join(dir, "admin.sock")
	srv, err := g.listenAdmin(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(dir); err != nil || fi.Mode().Perm() != 0o700 {
		t.Fatalf("socket directory: %v, %v; want mode 0700", fi.Mode(), err)
	}
	if err := fsafe.CheckSocket(path); err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Lstat(path); fi.Mode().Perm() != 0o600 {
		t.Fatalf("socket mode %04o, want 0600", fi.Mode().Perm())
	}
	if _, err := g.listenAdmin(path); err == nil {
		t.Fatal("a second guard took over a socket in use")
	}
	// Killed: the socket file stays, nobody listens.
	srv.ln.(*net.UnixListener).SetUnlinkOnClose(false)
	srv.ln.Close()
	srv, err = g.listenAdmin(path)
	if err != nil {
		t.Fatalf("stale socket not replaced: %v", err)
	}
	srv.ln.Close()

	file := filepath.Join(dir, "file.sock")
	writeMode(t, file, "keep\n", 0o600)
	link := filepath.Join(dir, "link.sock")
	if err := os.Symlink(file, link); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ path, want string }{
		{file, "response.admin_socket: " + file + " exists and is not a socket: move it away"},
		{link, "response.admin_socket: " + link + " exists and is a symlink: move it away"},
	} {
		if _, err := g.listenAdmin(c.path); err == nil || err.Error() != c.want {
			t.Errorf("listenAdmin = %v, want %s", err, c.want)
		}
	}
	if b, _ := os.ReadFile(file); string(b) != "keep\n" {
		t.Errorf("the file at the path was touched: %q", b)
	}
}
