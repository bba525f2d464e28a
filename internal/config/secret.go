package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/astguard/astguard/internal/fsafe"
)

// Secret is a password that never prints: String, GoString, Format (every
// fmt verb), MarshalText and MarshalJSON all give "[redacted]". Reveal
// returns the value.
type Secret string

const redacted = "[redacted]"

// Reveal returns the secret itself, for the one place that needs it.
func (s Secret) Reveal() string { return string(s) }

// String returns "[redacted]".
func (Secret) String() string { return redacted }

// GoString returns "[redacted]".
func (Secret) GoString() string { return redacted }

// Format writes "[redacted]" for every verb, so that even a wrong verb
// (whose error text would otherwise show the raw value) does not leak it.
func (Secret) Format(f fmt.State, _ rune) { _, _ = io.WriteString(f, redacted) }

// MarshalText returns "[redacted]".
func (Secret) MarshalText() ([]byte, error) { return []byte(redacted), nil }

// MarshalJSON returns the JSON string "[redacted]".
func (Secret) MarshalJSON() ([]byte, error) { return []byte(`"` + redacted + `"`), nil }

// maxSecretLine bounds what is read of ami.secret_file.
const maxSecretLine = 4096

// resolveSecret sets c.AMI.Secret from SecretEnv or, failing that, from the
// first line of ami.secret_file (relative to dir unless absolute). The
// secret_file is not read when SecretEnv is set.
func (c *Config) resolveSecret(dir string) error {
	if v := os.Getenv(SecretEnv); v != "" {
		if strings.ContainsAny(v, "\r\n") {
			return errors.New(SecretEnv + " must not contain CR or LF")
		}
		c.AMI.Secret = Secret(v)
		return nil
	}
	path := c.secretFilePath(dir)
	if path == "" {
		return nil
	}
	s, err := readFirstLine(path)
	if err != nil {
		return fmt.Errorf("ami.secret_file: %w", err)
	}
	if strings.ContainsRune(s, '\r') {
		return errors.New("ami.secret_file: the secret must not contain CR or LF")
	}
	c.AMI.Secret = Secret(s)
	return nil
}

// secretFilePath is ami.secret_file resolved against dir, or "".
func (c *Config) secretFilePath(dir string) string {
	path := c.AMI.SecretFile
	if path != "" && !filepath.IsAbs(path) {
		path = filepath.Join(dir, path)
	}
	return path
}

// SecretFilePath returns the file Load read the AMI secret from, given the
// configuration file's path: ami.secret_file resolved against that file's
// directory, or "" when the secret does not come from a file (SecretEnv is
// set, or secret_file is empty). `guard run` checks that file's owner and
// mode.
func (c *Config) SecretFilePath(configPath string) string {
	if os.Getenv(SecretEnv) != "" {
		return ""
	}
	return c.secretFilePath(filepath.Dir(configPath))
}

// readFirstLine returns the first line of the file without its line end.
// The file must be a regular file named by its own path: a symlink is
// refused (the checks the guard makes cannot tell the AMI secret from any
// other root-only file a link might point to, such as /etc/shadow, whose
// first line would then be sent to the AMI server), and so is a FIFO or a
// device (it could block or never end).
func readFirstLine(path string) (string, error) {
	f, err := fsafe.OpenNoFollow(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxSecretLine+1))
	if err != nil {
		return "", err
	}
	line, _, found := bytes.Cut(b, []byte("\n"))
	if !found && len(b) > maxSecretLine {
		return "", fmt.Errorf("%s: the first line is longer than %d bytes", path, maxSecretLine)
	}
	return string(bytes.TrimRight(line, "\r")), nil
}

// RequireSecret reports an empty AMI secret; the live command needs one,
// the replay command does not.
func (c *Config) RequireSecret() error {
	if c.AMI.Secret == "" {
		return errors.New("ami.secret is empty: set ami.secret, ami.secret_file or " + SecretEnv)
	}
	return nil
}
