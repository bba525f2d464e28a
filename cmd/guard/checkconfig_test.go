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

// A good file: ok, what the guard would never block, and where it would
// change secrets.
func TestCheckConfigOK(t *testing.T) {
	none := filepath.Join(t.TempDir(), "freepbx.conf")
	file, code, stdout, stderr := checkConfig(t, `
[allow]
networks = ["192.0.2.0/24", "0.0.0.0/0"]
confirm_wide = ["0.0.0.0/0"]
[response]
never_block = ["2001:db8::7", "192.0.2.0/24"]
[secrets.freepbx]
conf = "`+none+`"
`)
	want := file + ": ok\nnever blocked: 2001:db8::7, 192.0.2.0/24, 0.0.0.0/0, 127.0.0.1\n" +
		"secrets: files: auto: no " + none + " and no secrets.realtime.dsn: sip.conf and pjsip.conf, changed over AMI (UpdateConfig); an extension without its section there is refused\n"
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
	if code != 0 || !strings.HasPrefix(stdout, file+": ok\nnever blocked: 192.0.2.0/24\nsecrets: ") {
		t.Errorf("exit %d, stdout %q", code, stdout)
	}
	if !strings.HasPrefix(stderr, file+": warning: ami.address: cannot resolve pbx..example: ") ||
		!strings.HasSuffix(stderr, ": the guard would start without protecting the AMI server from a ban, and resolve it again at every reload and AMI connect\n") {
		t.Errorf("stderr %q", stderr)
	}
}

// The secret store auto picks on a FreePBX box, and the database it
// reads from /etc/freepbx.conf, never its password; a realtime database
// beside the files elsewhere; a store that cannot be used fails the check.
func TestCheckConfigSecrets(t *testing.T) {
	dir := t.TempDir()
	conf := filepath.Join(dir, "freepbx.conf")
	write := func(text string) {
		if err := os.WriteFile(conf, []byte(text), 0o640); err != nil {
			t.Fatal(err)
		}
	}
	write("<?php\n$amp_conf['AMPDBUSER'] = 'freepbxuser';\n$amp_conf['AMPDBPASS'] = 'Hunter2pass';\n$amp_conf['AMPDBHOST'] = 'localhost';\n" +
		"$amp_conf['AMPDBSOCK'] = '/var/lib/mysql/mysql.sock';\n$amp_conf['AMPDBNAME'] = 'asterisk';\nrequire_once('/var/www/html/admin/bootstrap.php');\n")
	file, code, stdout, stderr := checkConfig(t, "[secrets.freepbx]\nconf = \""+conf+"\"\n")
	want := "secrets: freepbx: auto: " + conf + " exists, a FreePBX box, whose Apply Config writes sip.conf and pjsip.conf from its database: " +
		"FreePBX's database, then `fwconsole reload` (at most 2m)\nsecrets database: mysql freepbxuser@unix(/var/lib/mysql/mysql.sock)/asterisk (from " + conf + ")\n"
	if code != 0 || !strings.HasPrefix(stdout, file+": ok\n") || !strings.HasSuffix(stdout, want) || stderr != "" {
		t.Errorf("FreePBX: exit %d\nstdout %q\nwant   ...%q\nstderr %q", code, stdout, want, stderr)
	}
	if strings.Contains(stdout+stderr, "Hunter2pass") {
		t.Error("the database password is shown")
	}

	// files on a FreePBX box: said to be overwritten there.
	_, code, stdout, _ = checkConfig(t, "[secrets]\nstore = \"files\"\n[secrets.freepbx]\nconf = \""+conf+"\"\n")
	if code != 0 || !strings.Contains(stdout, "; but "+conf+" exists: FreePBX writes those files from its database and puts the old secret back at its next Apply Config\n") {
		t.Errorf("files on FreePBX: exit %d, stdout %q", code, stdout)
	}

	// A settings file the guard cannot read without PHP: check-config fails.
	write("<?php\n$amp_conf['AMPDBUSER'] = 'freepbxuser';\n$amp_conf['AMPDBPASS'] = getenv('PASS');\n")
	file, code, _, stderr = checkConfig(t, "[secrets.freepbx]\nconf = \""+conf+"\"\n")
	if want := file + ": secrets: FreePBX's settings: " + conf + ": $amp_conf['AMPDBPASS'] is not a plain string (the guard does not run PHP): " +
		"give the database in secrets.freepbx.dsn and password_file: every rotate_secret would fail\n"; code != 1 || stderr != want {
		t.Errorf("unreadable settings: exit %d\nstderr %q\nwant   %q", code, stderr, want)
	}

	// No FreePBX, a realtime database: the files, and the tables beside.
	_, code, stdout, _ = checkConfig(t, "[secrets.freepbx]\nconf = \""+filepath.Join(dir, "none")+"\"\n[secrets.realtime]\ndsn = \"postgres://astguard@127.0.0.1:5432/asterisk?sslmode=disable\"\n")
	if code != 0 || !strings.Contains(stdout, "secrets: files+realtime: auto: no ") || !strings.HasSuffix(stdout, "\nsecrets database: postgres astguard@127.0.0.1:5432/asterisk\n") {
		t.Errorf("realtime: exit %d, stdout %q", code, stdout)
	}

	// A password file that is not there.
	file, code, _, stderr = checkConfig(t, "[secrets]\nstore = \"realtime\"\n[secrets.realtime]\ndsn = \"mysql://astguard@db/asterisk\"\npassword_file = \""+filepath.Join(dir, "missing")+"\"\n")
	if code != 1 || !strings.HasPrefix(stderr, file+": secrets: the password of secrets.realtime.dsn: ") {
		t.Errorf("missing password file: exit %d, stderr %q", code, stderr)
	}

	// A bad key is a problem of the file, with its line.
	file, code, _, stderr = checkConfig(t, "mode = \"observe\"\n[secrets]\nstore = \"db\"\n")
	if want := "config is invalid:\n" + file + `:3: secrets.store: "db" is not one of auto, files, freepbx, realtime` + "\n"; code != 1 || stderr != want {
		t.Errorf("bad key: exit %d, stderr %q", code, stderr)
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
