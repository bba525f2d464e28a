package secret

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

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

var pendingLine = Line{Time: time.Date(2026, 11, 25, 12, 47, 0, 0, time.UTC), Extension: "SIP/200", Secret: "NewSecret23", Status: Pending}

// A symlink planted at the secrets file's path must not make the guard
// write a new secret into the link's target, nor change the target's mode.
func TestFileNeverFollowsSymlink(t *testing.T) {
	dir := t.TempDir()
	target := filepath.Join(dir, "public.txt")
	writeMode(t, target, "public\n", 0o644)
	path := filepath.Join(dir, "secrets.jsonl")
	if err := os.Symlink(target, path); err != nil {
		t.Fatal(err)
	}
	got, err := NewFile(path).Record(pendingLine)
	if !errors.Is(err, fsafe.ErrUnsafe) || got != path {
		t.Fatalf("Record through a symlink: %q, %v; want %q and fsafe.ErrUnsafe", got, err, path)
	}
	b, _ := os.ReadFile(target)
	fi, _ := os.Stat(target)
	if string(b) != "public\n" || fi.Mode().Perm() != 0o644 {
		t.Fatalf("the link's target was touched: mode %04o, content %q", fi.Mode().Perm(), b)
	}
	if err := CheckFile(path); !errors.Is(err, fsafe.ErrUnsafe) {
		t.Fatalf("CheckFile(symlink) = %v, want fsafe.ErrUnsafe", err)
	}
}

// A secrets file others can read has given its secrets away already: it is
// refused (not quietly tightened).
func TestFileRefusesLooseMode(t *testing.T) {
	path := filepath.Join(t.TempDir(), "secrets.jsonl")
	writeMode(t, path, "", 0o644)
	if _, err := NewFile(path).Record(pendingLine); !errors.Is(err, fsafe.ErrUnsafe) {
		t.Fatalf("Record to a 0644 file: err = %v, want fsafe.ErrUnsafe", err)
	}
	if b, _ := os.ReadFile(path); len(b) != 0 {
		t.Fatalf("a secret was written to a file others can read: %q", b)
	}
	want := "unsafe file: " + path + ": mode 0644 lets other users in: chmod 600 it"
	if err := CheckFile(path); err == nil || err.Error() != want {
		t.Fatalf("CheckFile = %v\nwant %s", err, want)
	}
}

// A missing secrets file is created 0600, its missing directory 0700, and
// each record is one JSON line.
func TestFileCreatedPrivate(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "lib", "astguard")
	path := filepath.Join(dir, "secrets.jsonl")
	if err := CheckFile(path); err != nil {
		t.Fatalf("a missing file: %v", err)
	}
	f := NewFile(path)
	applied := pendingLine
	applied.Status = Applied
	for _, l := range []Line{pendingLine, applied} {
		if _, err := f.Record(l); err != nil {
			t.Fatal(err)
		}
	}
	if err := fsafe.CheckPrivate(path); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(dir); err != nil || fi.Mode().Perm() != 0o700 {
		t.Fatalf("directory: %v, %v; want mode 0700", fi.Mode(), err)
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var got []FileLine
	for _, l := range strings.Split(strings.TrimSpace(string(raw)), "\n") {
		var fl FileLine
		if err := json.Unmarshal([]byte(l), &fl); err != nil {
			t.Fatalf("line %q: %v", l, err)
		}
		got = append(got, fl)
	}
	want := []FileLine{
		{Time: pendingLine.Time, Extension: "SIP/200", Secret: "NewSecret23", Status: Pending},
		{Time: pendingLine.Time, Extension: "SIP/200", Secret: "NewSecret23", Status: Applied},
	}
	if len(got) != len(want) || got[0] != want[0] || got[1] != want[1] {
		t.Errorf("lines %+v, want %+v", got, want)
	}
}
