package guard

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// The recording rotates by size, keeps the newest files, and each file is a
// transcript of its own (banner first).
func TestRecorderRotates(t *testing.T) {
	path := filepath.Join(t.TempDir(), "rec.ami")
	r, err := newRecorder(path, 1000, 2, func() string { return "Asterisk Call Manager/9.0.0" })
	if err != nil {
		t.Fatal(err)
	}
	at := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	for i := range 40 {
		msg := fmt.Sprintf("Event: PeerStatus\r\nPeer: SIP/%d\r\nPeerStatus: Registered\r\n\r\n", 200+i)
		if err := r.write([]byte(msg), at); err != nil {
			t.Fatal(err)
		}
	}
	if err := r.close(); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{path, path + ".1", path + ".2"} {
		b, err := os.ReadFile(name)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.HasPrefix(string(b), "Asterisk Call Manager/9.0.0\r\nEvent: PeerStatus\r\n") ||
			!strings.Contains(string(b), "TimeReceived: 2026-11-25T12:00:00.000000Z\r\n\r\n") {
			t.Errorf("%s is not a transcript: %.100q", name, b)
		}
		if fi, _ := os.Stat(name); fi.Mode().Perm() != 0o600 {
			t.Errorf("%s mode %v", name, fi.Mode().Perm())
		}
	}
	if _, err := os.Stat(path + ".3"); !os.IsNotExist(err) {
		t.Errorf("more than 2 old recordings kept")
	}
}
