package fsafe

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/astguard/astguard/internal/testenv"
)

func write(t *testing.T, path string, mode os.FileMode) {
	t.Helper()
	if err := os.WriteFile(path, []byte("x\n"), mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, mode); err != nil { // past the umask
		t.Fatal(err)
	}
}

func TestOpenPrivateRefusesSymlink(t *testing.T) {
	dir := t.TempDir()
	target := filepath.Join(dir, "passwd")
	write(t, target, 0o644)
	link := filepath.Join(dir, "secrets.jsonl")
	if err := os.Symlink(target, link); err != nil {
		t.Fatal(err)
	}
	_, err := OpenPrivate(link, os.O_WRONLY|os.O_APPEND|os.O_CREATE)
	if !errors.Is(err, ErrUnsafe) {
		t.Fatalf("OpenPrivate through a symlink: err = %v, want ErrUnsafe", err)
	}
	fi, err := os.Stat(target)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o644 || fi.Size() != 2 {
		t.Fatalf("the symlink's target was touched: mode %v size %d", fi.Mode(), fi.Size())
	}
	if err := CheckPrivate(link); !errors.Is(err, ErrUnsafe) {
		t.Fatalf("CheckPrivate(symlink) = %v, want ErrUnsafe", err)
	}
}

func TestOpenPrivateCreates0600In0700Dir(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "var", "lib", "astguard")
	path := filepath.Join(dir, "secrets.jsonl")
	f, err := OpenPrivate(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE)
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if got := fi.Mode().Perm(); got != 0o600 {
		t.Fatalf("file mode %04o, want 0600", got)
	}
	di, err := os.Stat(dir)
	if err != nil {
		t.Fatal(err)
	}
	if got := di.Mode().Perm(); got != 0o700 {
		t.Fatalf("dir mode %04o, want 0700", got)
	}
}

func TestPrivateModeAndType(t *testing.T) {
	dir := t.TempDir()
	open := filepath.Join(dir, "open")
	write(t, open, 0o640)
	if _, err := OpenPrivate(open, os.O_RDONLY); !errors.Is(err, ErrUnsafe) {
		t.Fatalf("mode 0640: err = %v, want ErrUnsafe", err)
	}
	if err := CheckPrivate(open); !errors.Is(err, ErrUnsafe) {
		t.Fatalf("CheckPrivate(0640) = %v, want ErrUnsafe", err)
	}
	ok := filepath.Join(dir, "ok")
	write(t, ok, 0o600)
	if err := CheckPrivate(ok); err != nil {
		t.Fatalf("CheckPrivate(0600) = %v", err)
	}
	if _, err := OpenPrivate(dir, os.O_RDONLY); !errors.Is(err, ErrUnsafe) {
		t.Fatalf("a directory: err = %v, want ErrUnsafe", err)
	}
}

func TestPrivateOwner(t *testing.T) {
	testenv.RequireRoot(t, "give a file to another user")
	path := filepath.Join(t.TempDir(), "state.json")
	write(t, path, 0o600)
	if err := os.Chown(path, 65534, 65534); err != nil {
		t.Fatal(err)
	}
	if err := CheckPrivate(path); !errors.Is(err, ErrUnsafe) {
		t.Fatalf("owned by nobody: err = %v, want ErrUnsafe", err)
	}
	if err := CheckNotPublic(path); !errors.Is(err, ErrUnsafe) {
		t.Fatalf("CheckNotPublic owned by nobody: err = %v, want ErrUnsafe", err)
	}
}

func TestCheckNotPublic(t *testing.T) {
	dir := t.TempDir()
	// readable: only "readable by others" is wrong, so a caller told to
	// accept shared files may let it pass; writable by group or others
	// never passes.
	for _, c := range []struct {
		mode               os.FileMode
		ok, readableOthers bool
	}{
		{0o600, true, false}, {0o640, true, false}, {0o400, true, false},
		{0o644, false, true}, {0o604, false, true},
		{0o660, false, false}, {0o602, false, false}, {0o646, false, false}, {0o666, false, false},
	} {
		// A file per mode: as an ordinary user, a 0400 file cannot be
		// written again.
		path := filepath.Join(dir, fmt.Sprintf("config-%04o.toml", c.mode))
		write(t, path, c.mode)
		err := CheckNotPublic(path)
		if c.ok && err != nil || !c.ok && !errors.Is(err, ErrUnsafe) {
			t.Errorf("mode %04o: err = %v, want ok=%v", c.mode, err, c.ok)
		}
		if got := errors.Is(err, ErrReadableByOthers); got != c.readableOthers {
			t.Errorf("mode %04o: errors.Is(%v, ErrReadableByOthers) = %v, want %v", c.mode, err, got, c.readableOthers)
		}
	}
	// A link to a private file is followed.
	target := filepath.Join(dir, "real.toml")
	write(t, target, 0o600)
	link := filepath.Join(dir, "link.toml")
	if err := os.Symlink(target, link); err != nil {
		t.Fatal(err)
	}
	if err := CheckNotPublic(link); err != nil {
		t.Fatalf("link to a 0600 file: %v", err)
	}
	if err := CheckNotPublic(dir); !errors.Is(err, ErrUnsafe) || errors.Is(err, ErrReadableByOthers) {
		t.Fatalf("a directory: err = %v, want ErrUnsafe only", err)
	}
}

func TestCheckNotPublicSaysWhatToRun(t *testing.T) {
	path := filepath.Join(t.TempDir(), "config.toml")
	write(t, path, 0o644)
	want := "unsafe file: readable by every user: " + path + ": mode 0644; run: chmod o-r " + path + " (0600, or 0640 to share it with a group)"
	if err := CheckNotPublic(path); err == nil || err.Error() != want {
		t.Fatalf("err = %v\nwant %s", err, want)
	}
	write(t, path, 0o664)
	want = "unsafe file: " + path + ": mode 0664: writable by group or others; run: chmod go-w " + path
	if err := CheckNotPublic(path); err == nil || err.Error() != want {
		t.Fatalf("err = %v\nwant %s", err, want)
	}
}

func TestOpenNoFollow(t *testing.T) {
	dir := t.TempDir()
	target := filepath.Join(dir, "shadow")
	write(t, target, 0o600)
	f, err := OpenNoFollow(target)
	if err != nil {
		t.Fatalf("a regular file: %v", err)
	}
	f.Close()

	link := filepath.Join(dir, "ami-secret")
	if err := os.Symlink(target, link); err != nil {
		t.Fatal(err)
	}
	if _, err := OpenNoFollow(link); !errors.Is(err, ErrUnsafe) {
		t.Fatalf("a symlink: err = %v, want ErrUnsafe", err)
	}
	if _, err := OpenNoFollow(dir); !errors.Is(err, ErrUnsafe) {
		t.Fatalf("a directory: err = %v, want ErrUnsafe", err)
	}
	// A FIFO nobody writes to would block a plain open for ever.
	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := OpenNoFollow(fifo); !errors.Is(err, ErrUnsafe) {
		t.Fatalf("a FIFO: err = %v, want ErrUnsafe", err)
	}
	if _, err := OpenNoFollow(filepath.Join(dir, "missing")); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("a missing file: err = %v, want ErrNotExist", err)
	}
}

// listenUnix makes a listening unix socket at path with the given mode.
func listenUnix(t *testing.T, path string, mode os.FileMode) {
	t.Helper()
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	if err := os.Chmod(path, mode); err != nil {
		t.Fatal(err)
	}
}

func TestCheckSocket(t *testing.T) {
	dir := t.TempDir()
	for _, c := range []struct {
		mode os.FileMode
		ok   bool
	}{{0o600, true}, {0o660, true}, {0o700, true}, {0o666, false}, {0o602, false}, {0o777, false}} {
		path := filepath.Join(dir, fmt.Sprintf("s%o.sock", c.mode))
		listenUnix(t, path, c.mode)
		err := CheckSocket(path)
		if c.ok && err != nil || !c.ok && !errors.Is(err, ErrUnsafe) {
			t.Errorf("socket mode %04o: err = %v, want ok=%v", c.mode, err, c.ok)
		}
	}
	regular := filepath.Join(dir, "admin.sock")
	write(t, regular, 0o600)
	want := "unsafe file: " + regular + ": not a socket (a regular file)"
	if err := CheckSocket(regular); err == nil || err.Error() != want {
		t.Errorf("regular file: err = %v, want %s", err, want)
	}
	// A symlink to a good socket elsewhere is refused: the client does not
	// follow the path anywhere the guard did not put its socket.
	elsewhere := filepath.Join(t.TempDir(), "evil.sock")
	listenUnix(t, elsewhere, 0o600)
	link := filepath.Join(dir, "link.sock")
	if err := os.Symlink(elsewhere, link); err != nil {
		t.Fatal(err)
	}
	want = "unsafe file: " + link + ": is a symlink to \"" + elsewhere + "\", not the guard's socket"
	if err := CheckSocket(link); err == nil || err.Error() != want {
		t.Errorf("symlink: err = %v, want %s", err, want)
	}
	if err := CheckSocket(filepath.Join(dir, "missing.sock")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("missing: err = %v, want ErrNotExist", err)
	}
}

func TestCheckSocketOwner(t *testing.T) {
	testenv.RequireRoot(t, "give a socket to another user")
	path := filepath.Join(t.TempDir(), "admin.sock")
	listenUnix(t, path, 0o600)
	if err := os.Lchown(path, 65534, 65534); err != nil {
		t.Fatal(err)
	}
	want := "unsafe file: " + path + ": owned by uid 65534, neither root nor you (uid 0): not the guard's socket"
	if err := CheckSocket(path); err == nil || err.Error() != want {
		t.Fatalf("err = %v, want %s", err, want)
	}
}

func TestWriteFileAtomic(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	path := filepath.Join(dir, "bans.json")
	if err := WriteFileAtomic(path, []byte("one\n"), nil); err != nil {
		t.Fatal(err)
	}
	crash := errors.New("crash")
	if err := WriteFileAtomic(path, []byte("two\n"), func(string) error { return crash }); !errors.Is(err, crash) {
		t.Fatalf("err = %v, want the hook's", err)
	}
	got, err := os.ReadFile(path)
	if err != nil || string(got) != "one\n" {
		t.Fatalf("after a failed write: %q, %v; want the old content", got, err)
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Fatalf("temporary files left: %v", entries)
	}
	if err := CheckPrivate(path); err != nil {
		t.Fatal(err)
	}
	// A symlink at the path is refused, the target untouched.
	target := filepath.Join(t.TempDir(), "elsewhere")
	write(t, target, 0o644)
	link := filepath.Join(dir, "link.json")
	if err := os.Symlink(target, link); err != nil {
		t.Fatal(err)
	}
	if err := WriteFileAtomic(link, []byte("x"), nil); !errors.Is(err, ErrUnsafe) {
		t.Fatalf("symlink: err = %v, want ErrUnsafe", err)
	}
}
