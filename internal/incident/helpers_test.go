package incident

import (
	"bufio"
	"encoding/json"
	"errors"
	"io"
	"net/netip"
	"os"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/astguard/astguard/internal/ami"
	"github.com/astguard/astguard/internal/config"
	"github.com/astguard/astguard/internal/detector"
	"github.com/astguard/astguard/internal/policy"
)

const attackMixed = "../../testdata/transcripts/attack-mixed.ami"

// alertsOf replays the transcript at path through a detector with the
// default configuration and returns the alerts.
func alertsOf(t testing.TB, path string) []detector.Alert {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	tr := ami.NewTranscript(bufio.NewReader(f))
	if _, err := tr.Banner(); err != nil {
		t.Fatal(err)
	}
	det := detector.New(config.Default().Detector())
	var (
		msg ami.Message
		ev  ami.Event
		out []detector.Alert
	)
	for {
		seq, tm, err := tr.Next(&msg)
		if errors.Is(err, io.EOF) {
			return out
		}
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		if !ami.Decode(&msg, &ev) {
			continue
		}
		ev.Time, ev.Seq = tm, seq
		out = det.Process(&ev, out)
	}
}

// responder plays the guard's responder: it carries out every Running
// decision with the result it is told (Done by default), block_ip on the
// decision's address, and reports the outcome to the book.
type responder struct {
	t       testing.TB
	book    *Book
	tab     *policy.Table
	result  policy.Result // of every outcome; None: report none (the guard stops before)
	all     []policy.Decision
	saveErr error
}

func newResponder(t testing.TB, book *Book) *responder {
	tab, err := policy.NewTable(&config.Default().Policy)
	if err != nil {
		t.Fatal(err)
	}
	return &responder{t: t, book: book, tab: tab, result: policy.Done}
}

// alert hands a to the book at the alert's time and carries out the
// decisions; it returns them.
func (r *responder) alert(a *detector.Alert) []policy.Decision {
	return r.alertAt(a, a.Time)
}

func (r *responder) alertAt(a *detector.Alert, now time.Time) []policy.Decision {
	r.t.Helper()
	decs := r.book.Decide(r.tab, a, now, nil)
	// As the guard does before it carries out a rotation (and here before
	// any response, so that a test's restart finds them saved).
	if slices.ContainsFunc(decs, func(d policy.Decision) bool { return d.Action != policy.Alert && d.Result == policy.Running }) {
		if err := r.book.Flush(); err != nil {
			r.saveErr = err
		}
	}
	r.all = append(r.all, decs...)
	if r.result == policy.None {
		return decs
	}
	for _, d := range decs {
		if d.Action == policy.Alert || d.Result != policy.Running {
			continue
		}
		target := d.Key.String()
		if d.Action == policy.BlockIP && d.Addr.IsValid() {
			target = d.Addr.String()
		}
		if err := r.book.Outcome(d.Incident, d.Action, Outcome{Result: r.result, Target: target, Time: now, Detail: "carried out by the test"}); err != nil {
			r.t.Fatalf("Outcome(%s, %s): %v", d.Incident, d.Action, err)
		}
	}
	return decs
}

// count counts the decisions of action act with result res about key.
func count(ds []policy.Decision, key policy.Key, act policy.Action, res policy.Result) int {
	n := 0
	for _, d := range ds {
		if d.Key == key && d.Action == act && d.Result == res {
			n++
		}
	}
	return n
}

// blocks counts the block_ip decisions with result res by address.
func blocks(ds []policy.Decision, res policy.Result) map[netip.Addr]int {
	m := make(map[netip.Addr]int)
	for _, d := range ds {
		if d.Action == policy.BlockIP && d.Result == res {
			m[d.Addr]++
		}
	}
	return m
}

// memStore is a Store in memory: what it saved last, and how often.
type memStore struct {
	mu    sync.Mutex
	raw   json.RawMessage
	saves int
	err   error // returned (and nothing kept) while set
}

func (s *memStore) SaveIncidents(raw json.RawMessage) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.err != nil {
		return s.err
	}
	s.raw = append(json.RawMessage(nil), raw...)
	s.saves++
	return nil
}

func (s *memStore) last() (json.RawMessage, int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.raw, s.saves
}

// refusingStore fails the test when the book saves.
type refusingStore struct{ t testing.TB }

func (s refusingStore) SaveIncidents(json.RawMessage) error {
	s.t.Error("the book saved in observe mode")
	return nil
}

func mustBook(t testing.TB, o Options) *Book {
	t.Helper()
	if o.Quiet == 0 {
		o.Quiet = time.Duration(config.Default().Response.IncidentQuiet)
	}
	b, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

var (
	sip200   = policy.ExtensionKey(ami.TechSIP, "200")
	pjsip300 = policy.ExtensionKey(ami.TechPJSIP, "300")
	addr2    = netip.MustParseAddr("127.0.0.2")
	addr4    = netip.MustParseAddr("127.0.0.4")
	addr5    = netip.MustParseAddr("127.0.0.5")
)
