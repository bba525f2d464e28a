package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func checkConfig(t *testing.T, content string) (file string, code int, stdout, stderr string) {
	t.Helper()
	file = filepath.Join(t.TempDir(), "config.toml")
	if err := os.WriteFile(file, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	var out, errOut bytes.Buffer
	code = run([]string{"check-config", "--config", file}, &out, &errOut)
	return file, code, out.String(), errOut.String()
}

// A good file: ok, and what the guard would never block.
func TestCheckConfigOK(t *testing.T) {
	file, code, stdout, stderr := checkConfig(t, `
[allow]
networks = ["192.0.2.0/24", "0.0.0.0/0"]
confirm_wide = ["0.0.0.0/0"]
[response]
never_block = ["2001:db8::7", "192.0.2.0/24"]
`)
	want := file + ": ok\nnever blocked: 2001:db8::7, 192.0.2.0/24, 0.0.0.0/0, 127.0.0.1\n"
	if code != 0 || stdout != want || stderr != "" {
		t.Errorf("exit %d\nstdout %q\nwant   %q\nstderr %q", code, stdout, want, stderr)
	}
}

// Every problem, each with the file, line and key, in the order of the
// lines.
func TestCheckConfigEveryProblem(t *testing.T) {
	file, code, stdout, stderr := checkConfig(t, `mode = "enforce"
[ami]
queue_size = "big"
[allow]
networks = [
  "10.1.2.3/8",
  "0.0.0.0/0",
]
[response]
never_block = ["10.1.2.3/1"]
`)
	want := "config is invalid:\n" +
		file + `:3: ami.queue_size must be an integer, not a string` + "\n" +
		file + `:6: allow.networks[0]: "10.1.2.3/8" has host bits set: write 10.0.0.0/8 for the network or 10.1.2.3/32 for the address` + "\n" +
		file + `:7: allow.networks[1]: "0.0.0.0/0" is wider than /8 (allow.widest_ipv4), so no address in it would ever be counted or blocked; if you mean it, add "0.0.0.0/0" to confirm_wide in [allow]` + "\n" +
		file + `:10: response.never_block[0]: "10.1.2.3/1" has host bits set: write 0.0.0.0/1 for the network or 10.1.2.3/32 for the address` + "\n"
	if code != 1 || stdout != "" || stderr != want {
		t.Errorf("exit %d, stdout %q\nstderr\n%s\nwant\n%s", code, stdout, stderr, want)
	}
}

// An AMI host name that does not resolve is a warning, not an error: the
// guard starts all the same.
func TestCheckConfigUnresolvedAMI(t *testing.T) {
	// An invalid DNS name fails without a query leaving the machine.
	file, code, stdout, stderr := checkConfig(t, "[ami]\naddress = \"pbx..example:5038\"\n[allow]\nnetworks = [\"192.0.2.0/24\"]\n")
	if code != 0 || stdout != file+": ok\nnever blocked: 192.0.2.0/24\n" {
		t.Errorf("exit %d, stdout %q", code, stdout)
	}
	if !strings.HasPrefix(stderr, file+": warning: ami.address: cannot resolve pbx..example: ") ||
		!strings.HasSuffix(stderr, ": the guard would start without protecting the AMI server from a ban, and resolve it again at every reload and AMI connect\n") {
		t.Errorf("stderr %q", stderr)
	}
}

// The [crowdsec] table's problems, each at its line; a credential missing
// for a part that is on is placed at the line that turns it on.
func TestCheckConfigCrowdSec(t *testing.T) {
	t.Setenv("ASTGUARD_CROWDSEC_PASSWORD", "")
	t.Setenv("ASTGUARD_CROWDSEC_API_KEY", "")
	file, code, stdout, stderr := checkConfig(t, `[crowdsec]
push = true
pull = true
url = "http://guard:s3cret@127.0.0.1:8080/"
machine_id = "pbx-1"
api_key = "k"
pull_interval = "100ms"
widest_ipv4 = 40
`)
	want := "config is invalid:\n" +
		file + `:2: crowdsec.password is empty while crowdsec.push is true: set crowdsec.password, crowdsec.password_file or ASTGUARD_CROWDSEC_PASSWORD` + "\n" +
		file + `:4: crowdsec.url: "http://127.0.0.1:8080/" must not hold credentials: use crowdsec.password or crowdsec.api_key` + "\n" +
		file + `:7: crowdsec.pull_interval must be at least 1s` + "\n" +
		file + `:8: crowdsec.widest_ipv4 must be between 0 and 32` + "\n"
	if code != 1 || stdout != "" || stderr != want {
		t.Errorf("exit %d, stdout %q\nstderr\n%s\nwant\n%s", code, stdout, stderr, want)
	}
}
