package guard

import (
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"sync"
	"time"

	"github.com/astguard/astguard/internal/fsafe"
)

// secretAlphabet holds only letters and digits: a SIP secret lands in
// sip.conf or pjsip.conf, where ';' starts a comment and other punctuation
// trips up phones' provisioning.
const secretAlphabet = "ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789"

// secretLen gives 24 characters from a 57-symbol alphabet: about 140 bits.
const secretLen = 24

// newSecret returns a random secret from crypto/rand, without modulo bias.
func newSecret() (string, error) {
	out := make([]byte, 0, secretLen)
	var b [64]byte
	for len(out) < secretLen {
		if _, err := rand.Read(b[:]); err != nil {
			return "", err
		}
		for _, c := range b {
			// 57*4 = 228: accept bytes below it, so every symbol is equally likely
			if int(c) < 4*len(secretAlphabet) && len(out) < secretLen {
				out = append(out, secretAlphabet[int(c)%len(secretAlphabet)])
			}
		}
	}
	return string(out), nil
}

// secretsFile appends one JSON line per rotation to a file only the guard's
// user can read. It is opened afresh for every line, through fsafe: never
// through a symlink planted at its path (which would write the new secret
// into a file of someone else's choosing), and only if it is a regular file
// of the guard's user with mode 0600; its directory is made 0700 when
// missing.
type secretsFile struct {
	mu   sync.Mutex
	path string
}

type secretLine struct {
	Time      time.Time `json:"time"`
	Extension string    `json:"extension"`
	Secret    string    `json:"secret"`
	// Status is "pending" when written just before the UpdateConfig and
	// "applied" or "failed" once Asterisk answered.
	Status string `json:"status"`
}

// checkSecretsFile refuses, at start, a secrets file every rotation would
// refuse: better a guard that does not start than one that finds out during
// an attack that it cannot rotate. A missing file is fine: the first
// rotation creates it.
func checkSecretsFile(path string) error {
	err := fsafe.CheckPrivate(path)
	if err == nil || errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	return fmt.Errorf("response.secrets_file: %w", err)
}

func (f *secretsFile) write(l secretLine) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	fh, err := fsafe.OpenPrivate(f.path, os.O_WRONLY|os.O_APPEND|os.O_CREATE)
	if err != nil {
		return err
	}
	b, err := json.Marshal(l)
	if err != nil {
		fh.Close()
		return err
	}
	if _, err := fh.Write(append(b, '\n')); err != nil {
		fh.Close()
		return fmt.Errorf("write %s: %w", f.path, err)
	}
	if err := fh.Sync(); err != nil {
		fh.Close()
		return err
	}
	return fh.Close()
}
