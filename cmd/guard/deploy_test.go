package main

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/astguard/astguard/internal/testenv"
)

// unitExecStart returns the ExecStart command line of deploy/astguard.service.
func unitExecStart(t *testing.T, unit string) []string {
	t.Helper()
	f, err := os.Open(unit)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "ExecStart="); ok {
			return strings.Fields(v)
		}
	}
	t.Fatalf("%s has no ExecStart", unit)
	return nil
}

// The systemd unit starts the binary the README installs with a command
// line guard run accepts.
func TestUnitCommandLine(t *testing.T) {
	cmd := unitExecStart(t, "../../deploy/astguard.service")
	if len(cmd) < 2 || cmd[0] != "/usr/local/bin/guard" || cmd[1] != "run" {
		t.Fatalf("ExecStart = %q, want /usr/local/bin/guard run ...", cmd)
	}
	// Exit 2 is a usage error; anything else means the flags were taken
	// (here the configuration is then missing).
	useInstalledConfig(t, filepath.Join(t.TempDir(), "config.toml"))
	args := append([]string(nil), cmd[1:]...)
	for i, a := range args {
		if a == "/etc/astguard/config.toml" {
			args[i] = installedConfig
		}
	}
	if code, _, stderr := runGuard(args...); code != 1 || !strings.Contains(stderr, "config is invalid:\nopen "+installedConfig) {
		t.Fatalf("guard %q: exit %d, stderr %q; want its flags accepted and the configuration read", args, code, stderr)
	}
}

// systemd-analyze verify finds nothing to say about the unit, with
// ExecStart pointing at an executable (systemd-analyze checks that it
// exists and can be executed; it does not run it): this test binary stands
// in for the guard, which would take a build of its own. .ci/run installs
// systemd-analyze.
func TestUnitVerifies(t *testing.T) {
	t.Parallel()
	testenv.RequireCommand(t, "systemd-analyze")
	dir := t.TempDir()
	bin := filepath.Join(dir, "guard")
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(self, bin); err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile("../../deploy/astguard.service")
	if err != nil {
		t.Fatal(err)
	}
	unit := filepath.Join(dir, "astguard.service")
	if err := os.WriteFile(unit, []byte(strings.ReplaceAll(string(raw), "/usr/local/bin/guard", bin)), 0o644); err != nil {
		t.Fatal(err)
	}
	// Unknown keys and similar mistakes are only warnings: any output fails.
	out, err := exec.Command("systemd-analyze", "verify", unit).CombinedOutput()
	if err != nil || len(out) != 0 {
		t.Fatalf("systemd-analyze verify: %v\n%s", err, out)
	}
	// The check is real: a unit whose ExecStart names nothing fails it.
	if err := os.Remove(bin); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("systemd-analyze", "verify", unit).CombinedOutput(); err == nil && len(out) == 0 {
		t.Fatalf("systemd-analyze verify found nothing wrong with a missing ExecStart binary %s", bin)
	}
}

// The FreePBX drop-in (deploy/freepbx.conf) is read with the unit and
// systemd-analyze verify finds nothing to say about them together.
func TestFreePBXDropInVerifies(t *testing.T) {
	t.Parallel()
	testenv.RequireCommand(t, "systemd-analyze")
	dir := t.TempDir()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile("../../deploy/astguard.service")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "astguard.service"), []byte(strings.ReplaceAll(string(raw), "/usr/local/bin/guard", self)), 0o644); err != nil {
		t.Fatal(err)
	}
	dropIn, err := os.ReadFile("../../deploy/freepbx.conf")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(dir, "astguard.service.d"), 0o755); err != nil {
		t.Fatal(err)
	}
	verify := func(dropIn string) string {
		if err := os.WriteFile(filepath.Join(dir, "astguard.service.d", "freepbx.conf"), []byte(dropIn), 0o644); err != nil {
			t.Fatal(err)
		}
		// The unit by name, from this directory only: its drop-ins are read.
		cmd := exec.Command("systemd-analyze", "verify", "astguard.service")
		cmd.Env = append(os.Environ(), "SYSTEMD_UNIT_PATH="+dir+":")
		out, err := cmd.CombinedOutput()
		if err != nil && len(out) == 0 {
			t.Fatalf("systemd-analyze verify: %v", err)
		}
		return string(out)
	}
	if out := verify(string(dropIn)); out != "" {
		t.Fatalf("systemd-analyze verify with the drop-in:\n%s", out)
	}
	// The check is real: the drop-in is read.
	if out := verify(string(dropIn) + "NoSuchKey=1\n"); !strings.Contains(out, "freepbx.conf") {
		t.Fatalf("a bad drop-in went unseen: %q", out)
	}
}
