package config

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// The CrowdSec credentials come from the environment, else from their
// file (relative to the configuration's directory), else from the file's
// own key; a part that is on without its credential is a problem placed at
// the line that turns it on. A file is not read while its part is off.
func TestCrowdSecCredentials(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, dir, "crowdsec.password", "pw-from-file\n")
	writeFile(t, dir, "crowdsec.key", "key-from-file\r\n")
	both := "[crowdsec]\npush = true\npull = true\nmachine_id = \"pbx1\"\n"
	for _, tc := range []struct {
		name, toml, envPW, envKey string
		wantPW, wantKey           string
		wantErr                   string // with PATH for the file
	}{
		{"inline", both + "password = \"pw-inline\"\napi_key = \"key-inline\"", "", "", "pw-inline", "key-inline", ""},
		{"files", both + "password = \"pw-inline\"\npassword_file = \"crowdsec.password\"\napi_key_file = \"crowdsec.key\"", "", "", "pw-from-file", "key-from-file", ""},
		{"environment first", both + "password_file = \"crowdsec.password\"\napi_key_file = \"missing\"", "pw-env", "key-env", "pw-env", "key-env", ""},
		{"off: not read", "[crowdsec]\npassword_file = \"missing\"\napi_key_file = \"missing\"", "", "", "", "", ""},
		{"missing password", both + "api_key = \"k\"", "", "", "", "",
			"PATH:2: crowdsec.password is empty while crowdsec.push is true: set crowdsec.password, crowdsec.password_file or ASTGUARD_CROWDSEC_PASSWORD"},
		{"missing key", both + "password = \"p\"", "", "", "", "",
			"PATH:3: crowdsec.api_key is empty while crowdsec.pull is true: set crowdsec.api_key, crowdsec.api_key_file or ASTGUARD_CROWDSEC_API_KEY"},
		{"missing file", both + "password_file = \"nowhere\"\napi_key = \"k\"", "", "", "", "",
			"PATH:5: crowdsec.password_file: open " + filepath.Join(dir, "nowhere") + ": no such file or directory"},
		{"environment with LF", both + "api_key = \"k\"", "a\nb", "", "", "", CrowdSecPasswordEnv + " must not contain CR or LF"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv(SecretEnv, "")
			t.Setenv(CrowdSecPasswordEnv, tc.envPW)
			t.Setenv(CrowdSecAPIKeyEnv, tc.envKey)
			p := writeFile(t, dir, "astguard.toml", tc.toml+"\n")
			c, err := Load(p)
			if tc.wantErr != "" {
				if want := strings.ReplaceAll(tc.wantErr, "PATH", p); err == nil || err.Error() != want {
					t.Fatalf("error\n got: %v\nwant: %s", err, want)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if c.CrowdSec.Password.Reveal() != tc.wantPW || c.CrowdSec.APIKey.Reveal() != tc.wantKey {
				t.Errorf("password %q, key %q; want %q, %q", c.CrowdSec.Password.Reveal(), c.CrowdSec.APIKey.Reveal(), tc.wantPW, tc.wantKey)
			}
		})
	}
}

// guard run checks the files the credentials came from: those of a part
// that is on, unless its environment variable is set.
func TestCrowdSecSecretFiles(t *testing.T) {
	c := Default()
	c.CrowdSec.Push, c.CrowdSec.PasswordFile = true, "pw"
	c.CrowdSec.Pull, c.CrowdSec.APIKeyFile = false, "/etc/astguard/key"
	t.Setenv(CrowdSecPasswordEnv, "")
	if got := c.CrowdSecSecretFiles("/etc/astguard/config.toml"); !slices.Equal(got, []string{"/etc/astguard/pw"}) {
		t.Errorf("files %q", got)
	}
	c.CrowdSec.Pull = true
	t.Setenv(CrowdSecPasswordEnv, "from-env")
	if got := c.CrowdSecSecretFiles("/etc/astguard/config.toml"); !slices.Equal(got, []string{"/etc/astguard/key"}) {
		t.Errorf("files %q", got)
	}
}

// The credentials print as [redacted] wherever the configuration is
// printed or dumped, and a reload names their keys only.
func TestCrowdSecCredentialsRedacted(t *testing.T) {
	c := Default()
	c.CrowdSec.Password, c.CrowdSec.APIKey = "pw-Kq2", "key-Lm8"
	js, err := json.Marshal(c)
	if err != nil {
		t.Fatal(err)
	}
	for name, out := range map[string]string{
		"%v %+v %#v": fmt.Sprintf("%v %+v %#v", c, c.CrowdSec, c),
		"json":       string(js),
	} {
		if strings.Contains(out, "pw-Kq2") || strings.Contains(out, "key-Lm8") {
			t.Errorf("%s leaks a credential: %s", name, out)
		}
		if strings.Count(out, "[redacted]") < 2 {
			t.Errorf("%s does not say [redacted] for both: %s", name, out)
		}
	}
	d := Default()
	if got := Changed(d, c); !slices.Equal(got, []string{"crowdsec.password", "crowdsec.api_key"}) {
		t.Errorf("Changed: %q", got)
	}
}
