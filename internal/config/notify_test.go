package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// Each case is decoded over the defaults; want is the whole error text.
var badNotify = []struct {
	name, toml, want string
}{
	{"queue 0", `notify.queue_size = 0`, `notify.queue_size must be between 1 and 1048576`},
	{"batch negative", `notify.batch_delay = "-1s"`, `notify.batch_delay must be >= 0`},
	{"digest negative", `notify.digest_threshold = -1`, `notify.digest_threshold must be >= 0`},
	{"digest window 0", `notify.digest_window = "0s"`, `notify.digest_window must be > 0`},
	{"trouble 0", `notify.trouble_after = "0s"`, `notify.trouble_after must be > 0`},
	{"instance LF", `notify.instance = "pbx\nBcc: x"`, `notify.instance must be at most 128 bytes without control characters`},

	{"webhook not a URL", `notify.webhook.url = "hooks.example.com/x"`, `notify.webhook.url: "hooks.example.com/x" is not an http:// or https:// URL`},
	{"webhook ftp", `notify.webhook.url = "ftp://example.com/x"`, `notify.webhook.url: "ftp://example.com/x" is not an http:// or https:// URL`},
	{"webhook password in URL", `notify.webhook.url = "https://u:p4ss@example.com/x"`,
		`notify.webhook.url: "https://u:xxxxx@example.com/x" holds a user or password, which would be logged with the URL: use the signature (hmac_key) instead`},
	{"webhook severity", `notify.webhook.min_severity = "info"`, `notify.webhook.min_severity: "info" is not one of warning, critical`},
	{"webhook attempts", `notify.webhook.attempts = 0`, `notify.webhook.attempts must be between 1 and 20`},
	{"webhook timeout", `notify.webhook.timeout = "0s"`, `notify.webhook.timeout must be > 0`},
	{"webhook header", `notify.webhook.signature_header = "X Sig"`, `notify.webhook.signature_header: "X Sig" is not a header name (letters, digits and -)`},
	{"webhook key LF", `notify.webhook.hmac_key = "k\ney"`, `notify.webhook.hmac_key must not contain CR or LF`},
	{"webhook format", `notify.webhook.body_format = "xml"`, `notify.webhook.body_format: "xml" is not one of json, text`},
	{"webhook text without template", `notify.webhook.body_format = "text"`,
		`notify.webhook.body_format is text, but notify.webhook.body_template is empty: the message without a template is JSON`},
	{"webhook template not JSON", `notify.webhook.body_template = '{"text": {{.Title}}}'`,
		`notify.webhook.body_template: the template does not write valid JSON (put each string value between quotes: "{{.Title}}")`},
	{"webhook template unknown field", `notify.webhook.body_template = '{"text": "{{.Subject}}"}'`,
		`notify.webhook.body_template: template: body:1:12: executing "body" at <.Subject>: can't evaluate field Subject in type *message.Message`},

	{"alertmanager URL", `notify.alertmanager.url = "127.0.0.1:9093"`, `notify.alertmanager.url: "127.0.0.1:9093" is not an http:// or https:// URL`},
	{"alertmanager resend", `notify.alertmanager.resend_interval = "0s"`, `notify.alertmanager.resend_interval must be > 0`},

	{"email server", "[notify.email]\nserver = \"smtp.example.com\"\nfrom = \"a@example.com\"\nto = [\"b@example.com\"]",
		`notify.email.server: "smtp.example.com" must be host:port`},
	{"email without from", "[notify.email]\nserver = \"smtp.example.com:587\"\nto = [\"b@example.com\"]",
		`notify.email.from must be set when notify.email.server is`},
	{"email without to", "[notify.email]\nserver = \"smtp.example.com:587\"\nfrom = \"a@example.com\"",
		`notify.email.to must list at least one address when notify.email.server is`},
	{"email tls", `notify.email.tls = "ssl"`, `notify.email.tls: "ssl" is not one of starttls, tls, none`},
	{"email login in clear", "[notify.email]\ntls = \"none\"\nusername = \"guard\"",
		`notify.email.username is set but notify.email.tls is none: the password would cross the network in clear (use starttls or tls)`},
	{"email password without user", `notify.email.password = "x"`,
		`notify.email.password is set but notify.email.username is empty: no login is made without a username`},
	{"email from", `notify.email.from = "not an address"`, `notify.email.from: "not an address" is not a mail address`},
	{"email to", `notify.email.to = ["ok@example.com", "a@b\r\nBcc: x@example.com"]`, `notify.email.to[1]: "a@b\r\nBcc: x@example.com" is not a mail address`},
	{"email attempts", `notify.email.attempts = 21`, `notify.email.attempts must be between 1 and 20`},
}

func TestBadNotify(t *testing.T) {
	for _, tc := range badNotify {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse([]byte(tc.toml))
			if err == nil || err.Error() != tc.want {
				t.Errorf("error\n got: %v\nwant: %s", err, tc.want)
			}
		})
	}
}

func TestGoodNotify(t *testing.T) {
	c, err := Parse([]byte(`
[notify.webhook]
url = "https://hooks.example.com/services/T0/B0/XXXX"
hmac_key = "k"
body_format = "text"
body_template = "{{.Title}}"
[notify.alertmanager]
url = "http://127.0.0.1:9093"
[notify.email]
server = "smtp.example.com:465"
tls = "tls"
username = "guard"
password = "p"
from = "astguard <astguard@example.com>"
to = ["voip@example.com"]
`))
	if err != nil {
		t.Fatal(err)
	}
	if !c.Notify.Enabled() || c.Notify.Email.Password.Reveal() != "p" || c.Notify.Webhook.HMACKey.Reveal() != "k" {
		t.Fatalf("%+v", c.Notify)
	}
	if Default().Notify.Enabled() {
		t.Fatal("a sender is on by default")
	}
}

// The secrets come from the environment, else the first line of their
// file (relative to the configuration), and never print.
func TestNotifySecrets(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, dir, "hmac", "from-file\nsecond line\n")
	writeFile(t, dir, "smtp", "smtp-from-file\n")
	writeFile(t, dir, "ca.pem", "not a certificate")
	p := writeFile(t, dir, "config.toml", `
[notify.webhook]
url = "https://hooks.example.com/x"
hmac_key = "inline"
hmac_key_file = "hmac"
[notify.email]
username = "guard"
password_file = "smtp"
`)
	t.Setenv(HMACKeyEnv, "")
	t.Setenv(SMTPPasswordEnv, "")
	c, err := Load(p)
	if err != nil {
		t.Fatal(err)
	}
	if c.Notify.Webhook.HMACKey.Reveal() != "from-file" || c.Notify.Email.Password.Reveal() != "smtp-from-file" {
		t.Fatalf("from files: %q %q", c.Notify.Webhook.HMACKey.Reveal(), c.Notify.Email.Password.Reveal())
	}
	if got := c.NotifySecretFiles(p); len(got) != 2 || got[0] != filepath.Join(dir, "hmac") || got[1] != filepath.Join(dir, "smtp") {
		t.Fatalf("NotifySecretFiles = %v", got)
	}
	if s := strings.Join([]string{c.Notify.Webhook.HMACKey.String(), c.Notify.Email.Password.String()}, " "); s != "[redacted] [redacted]" {
		t.Fatal(s)
	}

	t.Setenv(HMACKeyEnv, "from-env")
	t.Setenv(SMTPPasswordEnv, "smtp-from-env")
	if c, err = Load(p); err != nil {
		t.Fatal(err)
	}
	if c.Notify.Webhook.HMACKey.Reveal() != "from-env" || c.Notify.Email.Password.Reveal() != "smtp-from-env" || len(c.NotifySecretFiles(p)) != 0 {
		t.Fatalf("from the environment: %+v", c.Notify)
	}

	// A missing file, a symlink, a CA that is no certificate: each names
	// its key and its line.
	t.Setenv(HMACKeyEnv, "")
	t.Setenv(SMTPPasswordEnv, "")
	if err := os.Symlink(filepath.Join(dir, "hmac"), filepath.Join(dir, "link")); err != nil {
		t.Fatal(err)
	}
	bad := writeFile(t, dir, "bad.toml", `[notify.webhook]
hmac_key_file = "link"
[notify.email]
tls_ca = "ca.pem"
password_file = "missing"
username = "guard"
`)
	_, err = Load(bad)
	for _, want := range []string{bad + ":2: notify.webhook.hmac_key_file: ", bad + ":5: notify.email.password_file: ",
		bad + ":4: notify.email.tls_ca: " + filepath.Join(dir, "ca.pem") + " holds no PEM certificate"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("error %v\nlacks %q", err, want)
		}
	}
}
