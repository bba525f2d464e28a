package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
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

// maxSecretLine bounds what is read of ami.secret_file, so that pointing it
// at /dev/zero fails instead of hanging.
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
	if c.AMI.SecretFile == "" {
		return nil
	}
	path := c.AMI.SecretFile
	if !filepath.IsAbs(path) {
		path = filepath.Join(dir, path)
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

// readFirstLine returns the first line of the file without its line end.
func readFirstLine(path string) (string, error) {
	f, err := os.Open(path)
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
