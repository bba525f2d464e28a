package guard

import (
	"context"
	"errors"
	"os"
	"path/filepath"
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

// A symlink planted at the secrets file's path must not make the guard
// write a new secret into the link's target, nor change the target's mode.
func TestSecretsFileNeverFollowsSymlink(t *testing.T) {
	dir := t.TempDir()
	target := filepath.Join(dir, "public.txt")
	writeMode(t, target, "public\n", 0o644)
	path := filepath.Join(dir, "secrets.jsonl")
	if err := os.Symlink(target, path); err != nil {
		t.Fatal(err)
	}
	f := &secretsFile{path: path}
	err := f.write(secretLine{Extension: "SIP/200", Secret: "NewSecret23", Status: "pending"})
	if !errors.Is(err, fsafe.ErrUnsafe) {
		t.Fatalf("write through a symlink: err = %v, want fsafe.ErrUnsafe", err)
	}
	b, _ := os.ReadFile(target)
	fi, _ := os.Stat(target)
	if string(b) != "public\n" || fi.Mode().Perm() != 0o644 {
		t.Fatalf("the link's target was touched: mode %04o, content %q", fi.Mode().Perm(), b)
	}
	if err := checkSecretsFile(path); !errors.Is(err, fsafe.ErrUnsafe) {
		t.Fatalf("checkSecretsFile(symlink) = %v, want fsafe.ErrUnsafe", err)
	}
}

// A secrets file others can read has given its secrets away already: the
// guard refuses to add to it (and refuses to start) instead of quietly
// tightening it.
func TestSecretsFileRefusesLooseMode(t *testing.T) {
	path := filepath.Join(t.TempDir(), "secrets.jsonl")
	writeMode(t, path, "", 0o644)
	f := &secretsFile{path: path}
	if err := f.write(secretLine{Extension: "SIP/200", Secret: "NewSecret23"}); !errors.Is(err, fsafe.ErrUnsafe) {
		t.Fatalf("write to a 0644 file: err = %v, want fsafe.ErrUnsafe", err)
	}
	if b, _ := os.ReadFile(path); len(b) != 0 {
		t.Fatalf("a secret was written to a file others can read: %q", b)
	}
	want := "response.secrets_file: unsafe file: " + path + ": mode 0644 lets other users in: chmod 600 it"
	if err := checkSecretsFile(path); err == nil || err.Error() != want {
		t.Fatalf("checkSecretsFile = %v\nwant %s", err, want)
	}
}

// A missing secrets file is created 0600, its missing directory 0700.
func TestSecretsFileCreatedPrivate(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "lib", "astguard")
	path := filepath.Join(dir, "secrets.jsonl")
	if err := checkSecretsFile(path); err != nil {
		t.Fatalf("a missing file: %v", err)
	}
	f := &secretsFile{path: path}
	for range 2 {
		if err := f.write(secretLine{Extension: "SIP/200", Secret: "NewSecret23", Status: "pending"}); err != nil {
			t.Fatal(err)
		}
	}
	if err := fsafe.CheckPrivate(path); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(dir); err != nil || fi.Mode().Perm() != 0o700 {
		t.Fatalf("directory: %v, %v; want mode 0700", fi.Mode(), err)
	}
}

// Run refuses to start with a secrets file it could not write safely, before
// it logs in anywhere.
func TestRunRefusesUnsafeSecretsFile(t *testing.T) {
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
