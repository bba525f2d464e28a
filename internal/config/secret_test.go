package config

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

const (
	inlineSecret = "inline-Zq7"
	fileSecret   = "file-Xw9"
	envSecret    = "env-Vb3"
)

// loadWith writes a config with the given [ami] secret lines and loads it.
func loadWith(t *testing.T, amiLines string) (*Config, error) {
	t.Helper()
	dir := t.TempDir()
	p := writeFile(t, dir, "astguard.toml", "[ami]\n"+amiLines+"\n")
	return Load(p)
}

func TestSecretPrecedence(t *testing.T) {
	dir := t.TempDir()
	sf := writeFile(t, dir, "ami.secret", fileSecret+"\r\n")
	both := fmt.Sprintf("secret = %q\nsecret_file = %q", inlineSecret, sf)

	for _, tc := range []struct {
		name, env, ami, want string
	}{
		{"env over file and inline", envSecret, both, envSecret},
		{"file over inline", "", both, fileSecret},
		{"inline alone", "", fmt.Sprintf("secret = %q", inlineSecret), inlineSecret},
		{"env over inline", envSecret, fmt.Sprintf("secret = %q", inlineSecret), envSecret},
		{"env alone", envSecret, "", envSecret},
		// The file is not read when the environment gives the secret.
		{"env with missing file", envSecret, `secret_file = "/nonexistent/ami.secret"`, envSecret},
		{"none", "", "", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv(SecretEnv, tc.env)
			c, err := loadWith(t, tc.ami)
			if err != nil {
				t.Fatal(err)
			}
			if got := c.AMI.Secret.Reveal(); got != tc.want {
				t.Errorf("secret = %q, want %q", got, tc.want)
			}
			if err := c.RequireSecret(); (err == nil) != (tc.want != "") {
				t.Errorf("RequireSecret() = %v with secret %q", err, tc.want)
			}
		})
	}
}

func TestSecretFile(t *testing.T) {
	t.Setenv(SecretEnv, "")
	for _, tc := range []struct {
		name, content, want string
	}{
		{"LF", "s3cret\n", "s3cret"},
		{"CRLF", "s3cret\r\n", "s3cret"},
		{"no line end", "s3cret", "s3cret"},
		{"first line only", "s3cret\nsecond line\n", "s3cret"},
		{"spaces kept", " s3 cret \n", " s3 cret "},
		{"empty file", "", ""},
		{"longest line", strings.Repeat("x", maxSecretLine) + "\n", strings.Repeat("x", maxSecretLine)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			writeFile(t, dir, "ami.secret", tc.content)
			// A relative secret_file is relative to the config file.
			p := writeFile(t, dir, "astguard.toml", "[ami]\nsecret = \"inline\"\nsecret_file = \"ami.secret\"\n")
			c, err := Load(p)
			if err != nil {
				t.Fatal(err)
			}
			if got := c.AMI.Secret.Reveal(); got != tc.want {
				t.Errorf("secret = %q, want %q", got, tc.want)
			}
		})
	}
}

func TestSecretErrors(t *testing.T) {
	dir := t.TempDir()
	cr := writeFile(t, dir, "cr.secret", "s3c\rret\n")
	long := writeFile(t, dir, "long.secret", strings.Repeat("x", maxSecretLine+1))
	for _, tc := range []struct {
		name, env, ami, want string
	}{
		{"missing file", "", `secret_file = "/nope"`, "FILE:2: ami.secret_file: open /nope: no such file or directory"},
		{"directory", "", fmt.Sprintf("secret_file = %q", dir), "FILE:2: ami.secret_file: unsafe file: " + dir + ": not a regular file (a directory)"},
		{"CR inside the file's first line", "", fmt.Sprintf("secret_file = %q", cr), "FILE:2: ami.secret_file: the secret must not contain CR or LF"},
		{"first line too long", "", fmt.Sprintf("secret_file = %q", long),
			fmt.Sprintf("FILE:2: ami.secret_file: %s: the first line is longer than 4096 bytes", long)},
		// The environment is not the file: no file or line.
		{"LF in env", "s3c\nret", "", SecretEnv + " must not contain CR or LF"},
		{"CR in env", "s3cret\r", "", SecretEnv + " must not contain CR or LF"},
		{"CR inline", "", `secret = "s3cret\r"`, "FILE:2: ami.secret must not contain CR or LF"},
		{"with other problems", "", "secret_file = \"/nope\"\nusername = \"\"",
			"FILE:2: ami.secret_file: open /nope: no such file or directory\nFILE:3: ami.username must not be empty"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv(SecretEnv, tc.env)
			c, err := loadWith(t, tc.ami)
			var file string
			if err != nil {
				file, _, _ = strings.Cut(err.Error(), ":")
			}
			want := strings.ReplaceAll(tc.want, "FILE", file)
			if err == nil || err.Error() != want {
				t.Errorf("error\n got: %v\nwant: %s", err, want)
			}
			if c != nil {
				t.Error("Load returned a Config with its error")
			}
		})
	}
}

// ami.secret_file must be the file itself: a symlink is refused, whatever
// it points to (a link to /etc/shadow would pass any owner or mode check,
// and its first line would go to the AMI server as the secret). A FIFO is
// refused at once rather than waited on.
func TestSecretFileMustBeRegular(t *testing.T) {
	t.Setenv(SecretEnv, "")
	dir := t.TempDir()
	target := writeFile(t, dir, "shadow", "root:$y$j9T$hash:19000:0:99999:7:::\n")
	link := filepath.Join(dir, "ami-secret")
	if err := os.Symlink(target, link); err != nil {
		t.Fatal(err)
	}
	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ name, path, want string }{
		{"symlink", link, "ami.secret_file: unsafe file: " + link + ": is a symlink: name the file itself"},
		{"relative symlink", "ami-secret", "ami.secret_file: unsafe file: " + link + ": is a symlink: name the file itself"},
		{"FIFO", fifo, "ami.secret_file: unsafe file: " + fifo + ": not a regular file (a FIFO)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := writeFile(t, dir, "astguard.toml", fmt.Sprintf("[ami]\nsecret_file = %q\n", tc.path))
			c, err := Load(p)
			if want := p + ":2: " + tc.want; err == nil || err.Error() != want {
				t.Fatalf("error\n got: %v\nwant: %s", err, want)
			}
			if c != nil {
				t.Error("Load returned a Config with its error")
			}
		})
	}
}

func TestSecretFilePath(t *testing.T) {
	for _, tc := range []struct{ name, env, file, configPath, want string }{
		{"relative to the config file", "", "ami-secret", "/etc/astguard/config.toml", "/etc/astguard/ami-secret"},
		{"absolute", "", "/run/secrets/ami", "/etc/astguard/config.toml", "/run/secrets/ami"},
		{"relative config path", "", "ami-secret", "config.toml", "ami-secret"},
		{"no secret_file", "", "", "/etc/astguard/config.toml", ""},
		// The environment wins: the file is not read, so not checked.
		{"environment set", envSecret, "ami-secret", "/etc/astguard/config.toml", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv(SecretEnv, tc.env)
			c := Default()
			c.AMI.SecretFile = tc.file
			if got := c.SecretFilePath(tc.configPath); got != tc.want {
				t.Errorf("SecretFilePath(%q) = %q, want %q", tc.configPath, got, tc.want)
			}
		})
	}
}

func TestRequireSecret(t *testing.T) {
	c := Default()
	want := "ami.secret is empty: set ami.secret, ami.secret_file or ASTGUARD_AMI_SECRET"
	if err := c.RequireSecret(); err == nil || err.Error() != want {
		t.Errorf("RequireSecret() = %v, want %s", err, want)
	}
	c.AMI.Secret = "x"
	if err := c.RequireSecret(); err != nil {
		t.Errorf("RequireSecret() with a secret = %v", err)
	}
}

// Parse does no I/O and ignores the environment.
func TestParseIgnoresEnvAndFile(t *testing.T) {
	t.Setenv(SecretEnv, envSecret)
	c, err := Parse([]byte(fmt.Sprintf("[ami]\nsecret = %q\nsecret_file = \"/nope\"\n", inlineSecret)))
	if err != nil {
		t.Fatal(err)
	}
	if got := c.AMI.Secret.Reveal(); got != inlineSecret {
		t.Errorf("secret = %q, want %q", got, inlineSecret)
	}
}

func TestSecretRedacted(t *testing.T) {
	dir := t.TempDir()
	sf := writeFile(t, dir, "ami.secret", fileSecret+"\n")
	t.Setenv(SecretEnv, "")
	c, err := loadWith(t, fmt.Sprintf("secret_file = %q", sf))
	if err != nil {
		t.Fatal(err)
	}
	if c.AMI.Secret.Reveal() != fileSecret {
		t.Fatalf("secret not loaded: %q", c.AMI.Secret.Reveal())
	}
	s := c.AMI.Secret
	js, err := json.Marshal(c)
	if err != nil {
		t.Fatal(err)
	}
	jsSecret, err := json.Marshal(s)
	if err != nil {
		t.Fatal(err)
	}
	text, err := s.MarshalText()
	if err != nil {
		t.Fatal(err)
	}
	var slogBuf, slogJSON strings.Builder
	slog.New(slog.NewTextHandler(&slogBuf, nil)).Info("config", "cfg", c, "secret", s)
	slog.New(slog.NewJSONHandler(&slogJSON, nil)).Info("config", "cfg", c, "secret", s)

	for name, out := range map[string]string{
		"%v %+v %#v %s": fmt.Sprintf("%v %+v %#v %s", c, c, s, s),
		"%#v config":    fmt.Sprintf("%#v %+v %v", c, *c, c.AMI),
		"other verbs":   fmt.Sprintf("%q %x %X %d %10s %-5v %t", s, s, s, s, s, s, s),
		"String":        s.String() + s.GoString(),
		"MarshalText":   string(text),
		"json config":   string(js),
		"json secret":   string(jsSecret),
		"slog text":     slogBuf.String(),
		"slog json":     slogJSON.String(),
	} {
		if strings.Contains(out, fileSecret) {
			t.Errorf("%s leaks the secret: %s", name, out)
		}
		if !strings.Contains(out, "[redacted]") {
			t.Errorf("%s does not say [redacted]: %s", name, out)
		}
	}
	if string(jsSecret) != `"[redacted]"` {
		t.Errorf("json.Marshal(secret) = %s", jsSecret)
	}
	if !strings.Contains(string(js), `"Secret":"[redacted]"`) || !strings.Contains(string(js), `"Cooldown":"5m"`) {
		t.Errorf("json.Marshal(cfg) = %s", js)
	}
}

func TestLoadRelativeSecretFileFromOtherDir(t *testing.T) {
	t.Setenv(SecretEnv, "")
	dir := t.TempDir()
	writeFile(t, dir, "ami.secret", fileSecret+"\n")
	p := writeFile(t, dir, "astguard.toml", "[ami]\nsecret_file = \"ami.secret\"\n")
	t.Chdir(t.TempDir()) // the working directory has no ami.secret
	c, err := Load(p)
	if err != nil {
		t.Fatal(err)
	}
	if c.AMI.Secret.Reveal() != fileSecret {
		t.Errorf("secret = %q, want %q", c.AMI.Secret.Reveal(), fileSecret)
	}
	// An absolute path is used as is.
	abs, err := filepath.Abs(filepath.Join(dir, "ami.secret"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(fmt.Sprintf("[ami]\nsecret_file = %q\n", abs)), 0o600); err != nil {
		t.Fatal(err)
	}
	if c, err = Load(p); err != nil || c.AMI.Secret.Reveal() != fileSecret {
		t.Errorf("absolute secret_file: %v, %q", err, c.AMI.Secret.Reveal())
	}
}
