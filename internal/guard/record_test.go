package guard

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/astguard/astguard/internal/ami"
	"github.com/astguard/astguard/internal/detector"
	"github.com/astguard/astguard/internal/fsafe"
	"github.com/astguard/astguard/internal/replay"
)

// The recording rotates by size, keeps the newest files, and each file is a
// transcript of its own (banner first).
func TestRecorderRotates(t *testing.T) {
	t.Parallel()
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

// fixtureMessages reads a transcript's messages as the live guard hands
// them to the recorder: raw bytes without the transcript's own
// TimeReceived line, and the time received; idle[i] tells whether no
// channel was up before message i.
func fixtureMessages(t *testing.T, path string) (banner string, raws [][]byte, times []time.Time, idle []bool) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	tr := ami.NewTranscript(f)
	if banner, err = tr.Banner(); err != nil {
		t.Fatal(err)
	}
	var msg ami.Message
	var ev ami.Event
	up := map[string]bool{}
	for {
		_, at, err := tr.Next(&msg)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		var raw []byte
		for _, line := range bytes.SplitAfter(msg.Raw(), []byte("\r\n")) {
			if !bytes.HasPrefix(line, []byte("TimeReceived: ")) {
				raw = append(raw, line...)
			}
		}
		raws, times, idle = append(raws, raw), append(times, at), append(idle, len(up) == 0)
		if ami.Decode(&msg, &ev) {
			switch ev.Kind {
			case ami.KindNewchannel:
				up[ev.Uniqueid] = true
			case ami.KindHangup:
				delete(up, ev.Uniqueid)
			}
		}
	}
	return banner, raws, times, idle
}

// verdict is an alert without its position, which counts from each
// session's start.
type verdict struct {
	Rule, Severity, Key, Time string
	Count                     int
}

func replayVerdicts(t *testing.T, path string) ([]verdict, []int, replay.Result) {
	t.Helper()
	var out []verdict
	var seqs []int
	res, err := replay.File(path, detector.Default(), func(a *detector.Alert) {
		key := a.Tech.String() + "/" + a.Extension
		if !a.IsExtension() {
			key = a.IP.String()
		}
		out = append(out, verdict{a.Rule.String(), a.Severity.String(), key, a.Time.UTC().Format(time.RFC3339Nano), a.Count})
		seqs = append(seqs, a.Seq)
	})
	if err != nil {
		t.Fatal(err)
	}
	return out, seqs, res
}

// A guard restarted twice with the same --record file leaves one file with
// its three sessions, each after a start marker, and the file replays into
// the verdicts of one uninterrupted session.
func TestRecordingAppendsAcrossRestarts(t *testing.T) {
	t.Parallel()
	const fixture = "../../testdata/transcripts/after-rotation.ami"
	banner, raws, times, idle := fixtureMessages(t, fixture)
	path := filepath.Join(t.TempDir(), "day.ami")
	// The guard restarts where no channel is up: a replay forgets the calls
	// up at a restart, since the recording does not hold what Asterisk told
	// the new guard about them. In after-rotation.ami no call is up at
	// messages 733 and 907, between its alerts.
	cuts := []int{0, 733, 907, len(raws)}
	for _, c := range cuts[1:3] {
		if !idle[c] {
			t.Fatalf("a call is up at message %d", c)
		}
	}
	for s := range 3 {
		r, err := newRecorder(path, 100<<20, 5, func() string { return banner })
		if err != nil {
			t.Fatal(err)
		}
		for i := cuts[s]; i < cuts[s+1]; i++ {
			if err := r.write(raws[i], times[i]); err != nil {
				t.Fatal(err)
			}
		}
		if err := r.close(); err != nil {
			t.Fatal(err)
		}
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(string(b), banner+"\r\nEvent: AstguardRecordingStart\r\nBanner: "+banner+"\r\nTimeReceived: ") {
		t.Errorf("the recording does not begin with the banner and a start marker: %.120q", b)
	}
	if n := strings.Count(string(b), "Event: AstguardRecordingStart\r\n"); n != 3 {
		t.Errorf("%d start markers, want 3 (one per session)", n)
	}
	if n := strings.Count(string(b), "Asterisk Call Manager/"); n != 4 { // the banner line and one Banner per marker
		t.Errorf("%d banners, want 4", n)
	}

	want, wantSeqs, _ := replayVerdicts(t, fixture)
	got, gotSeqs, res := replayVerdicts(t, path)
	if res.Messages != len(raws)+3 || res.Malformed != 0 {
		t.Errorf("replayed %d messages (%d malformed), want %d and none", res.Messages, res.Malformed, len(raws)+3)
	}
	if len(want) == 0 || !slices.Equal(got, want) {
		t.Fatalf("verdicts of the three sessions differ from one session's:\n got %v\nwant %v", got, want)
	}
	// Positions count from each session's start, as the restarted guard
	// counted them.
	for i := range wantSeqs {
		off := 0
		for _, c := range cuts[1:3] {
			if wantSeqs[i] > c {
				off = c
			}
		}
		if gotSeqs[i] != wantSeqs[i]-off {
			t.Errorf("alert %d (%v): seq %d, want %d", i, got[i], gotSeqs[i], wantSeqs[i]-off)
		}
	}
}

// A recording cut in the middle of a message (a guard killed during a
// write, a full disk) is closed off: the piece is rejected as malformed,
// never read as an event, and the new session follows intact.
func TestRecordingSealsATornTail(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "day.ami")
	torn := "Asterisk Call Manager/9.0.0\r\n" +
		"Event: PeerStatus\r\nPeer: SIP/200\r\nPeerStatus: Registered\r\nTimeReceived: 2026-11-25T12:00:00.000000Z\r\n\r\n" +
		"Event: Newchannel\r\nPrivilege: call,all\r\nChannel: SIP/2"
	for _, tail := range []string{"", "\r", "\r\n"} {
		writeMode(t, path, torn+tail, 0o600)
		r, err := newRecorder(path, 100<<20, 5, func() string { return "Asterisk Call Manager/9.0.0" })
		if err != nil {
			t.Fatal(err)
		}
		at := time.Date(2026, 11, 25, 13, 0, 0, 0, time.UTC)
		if err := r.write([]byte("Event: PeerStatus\r\nPeer: SIP/201\r\nPeerStatus: Registered\r\n\r\n"), at); err != nil {
			t.Fatal(err)
		}
		if err := r.close(); err != nil {
			t.Fatal(err)
		}
		f, _ := os.Open(path)
		tr := ami.NewTranscript(f)
		var msg ami.Message
		var events []string
		malformed := 0
		for {
			_, _, err := tr.Next(&msg)
			if errors.Is(err, io.EOF) {
				break
			}
			if errors.Is(err, ami.ErrMalformed) {
				malformed++
				continue
			}
			if err != nil {
				t.Fatal(err)
			}
			events = append(events, msg.Get("Event")+" "+msg.Get("Peer"))
		}
		f.Close()
		want := []string{"PeerStatus SIP/200", "AstguardRecordingStart ", "PeerStatus SIP/201"}
		if malformed != 1 || !slices.Equal(events, want) {
			t.Errorf("tail %q: messages %q with %d malformed; want %q and the torn one malformed", tail, events, malformed, want)
		}
	}
}

// What is not a recording is neither appended to nor truncated; a symlink
// at the path is not followed.
func TestRecordingRefusesOtherFiles(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	other := filepath.Join(dir, "notes.txt")
	writeMode(t, other, "my notes\n", 0o600)
	if _, err := newRecorder(other, 100<<20, 5, func() string { return "" }); err == nil || !strings.Contains(err.Error(), "is not an AMI transcript") {
		t.Errorf("a text file: err = %v, want it refused as not a transcript", err)
	}
	if b, _ := os.ReadFile(other); string(b) != "my notes\n" {
		t.Errorf("the text file was changed: %q", b)
	}
	target := filepath.Join(dir, "passwd")
	writeMode(t, target, "root:x:0:0\n", 0o644)
	link := filepath.Join(dir, "day.ami")
	if err := os.Symlink(target, link); err != nil {
		t.Fatal(err)
	}
	if _, err := newRecorder(link, 100<<20, 5, func() string { return "" }); !errors.Is(err, fsafe.ErrUnsafe) {
		t.Errorf("a symlink: err = %v, want fsafe.ErrUnsafe", err)
	}
	if fi, _ := os.Stat(target); fi.Mode().Perm() != 0o644 || fi.Size() != 11 {
		t.Errorf("the link's target was touched: %v, %d bytes", fi.Mode(), fi.Size())
	}
}

// A recording already at its size limit when the guard starts is rotated
// away whole; the new session starts a file of its own.
func TestRecordingFullAtStartRotates(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "day.ami")
	old := "Asterisk Call Manager/9.0.0\r\n" + strings.Repeat("Event: PeerStatus\r\nPeer: SIP/200\r\nPeerStatus: Registered\r\nTimeReceived: 2026-11-25T12:00:00.000000Z\r\n\r\n", 20)
	writeMode(t, path, old, 0o600)
	r, err := newRecorder(path, 1000, 2, func() string { return "Asterisk Call Manager/9.0.0" })
	if err != nil {
		t.Fatal(err)
	}
	at := time.Date(2026, 11, 25, 13, 0, 0, 0, time.UTC)
	if err := r.write([]byte("Event: PeerStatus\r\nPeer: SIP/201\r\nPeerStatus: Registered\r\n\r\n"), at); err != nil {
		t.Fatal(err)
	}
	if err := r.close(); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(path + ".1"); string(b) != old {
		t.Errorf("the full recording was not kept whole as %s.1", path)
	}
	want := "Asterisk Call Manager/9.0.0\r\nEvent: AstguardRecordingStart\r\nBanner: Asterisk Call Manager/9.0.0\r\nTimeReceived: 2026-11-25T13:00:00.000000Z\r\n\r\n" +
		"Event: PeerStatus\r\nPeer: SIP/201\r\nPeerStatus: Registered\r\nTimeReceived: 2026-11-25T13:00:00.000000Z\r\n\r\n"
	if b, _ := os.ReadFile(path); string(b) != want {
		t.Errorf("new recording:\n%q\nwant\n%q", b, want)
	}
}
