package replay

import (
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"runtime"
	"testing"

	"github.com/astguard/astguard/internal/detector"
)

const transcripts = "../../testdata/transcripts/"

func fixture(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(transcripts + name)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// full replays data reading every message in full: the reference.
func full(t *testing.T, data []byte) (Result, []detector.Alert) {
	t.Helper()
	var alerts []detector.Alert
	res, err := read(bytes.NewReader(data), detector.Default(), false, 0, func(a *detector.Alert) { alerts = append(alerts, *a) })
	if err != nil {
		t.Fatal(err)
	}
	return res, alerts
}

func replayed(t *testing.T, r io.Reader) (Result, []detector.Alert) {
	t.Helper()
	var alerts []detector.Alert
	res, err := Reader(r, detector.Default(), func(a *detector.Alert) { alerts = append(alerts, *a) })
	if err != nil {
		t.Fatal(err)
	}
	return res, alerts
}

func TestReaderSkipsUnusedEvents(t *testing.T) {
	data := fixture(t, "attack-mixed.ami")
	wantRes, want := full(t, data)
	res, got := replayed(t, bytes.NewReader(data))
	if !reflect.DeepEqual(got, want) || len(got) != 15 {
		t.Fatalf("%d alerts skipping, %d reading in full:\n%+v\n%+v", len(got), len(want), got, want)
	}
	if res.Messages != 4093 || res.Skipped != 3729 || res.Events != 363 || res.Alerts != 15 || res.ReadTwice {
		t.Errorf("result %+v", res)
	}
	if wantRes.Skipped != 0 || wantRes.Messages != res.Messages || wantRes.Events != res.Events || wantRes.Detector != res.Detector {
		t.Errorf("result %+v reading in full, %+v skipping", wantRes, res)
	}
}

// Without the recorder's TimeReceived and Asterisk's EventTV, channel
// events take their time from their Uniqueid and the others from the message
// before, often a skipped one: the transcript is read again in full, and
// every alert comes out once, those found before the first such message
// included.
func TestReaderReadsAgainWhenATimeWasSkipped(t *testing.T) {
	data := fixture(t, "attack-mixed.ami")
	noTimes := regexp.MustCompile(`(?m)^(TimeReceived|EventTV): .*\r\n`)
	half := len(data) / 2
	half += bytes.Index(data[half:], []byte("\r\n\r\n")) + 4
	for name, in := range map[string][]byte{
		"everywhere":       noTimes.ReplaceAll(data, nil),
		"second half only": append(data[:half:half], noTimes.ReplaceAll(data[half:], nil)...),
	} {
		_, want := full(t, in)
		res, got := replayed(t, bytes.NewReader(in))
		if !res.ReadTwice || res.Skipped != 0 {
			t.Errorf("%s: result %+v, want read twice", name, res)
		}
		if !reflect.DeepEqual(got, want) || len(got) < 10 {
			t.Fatalf("%s: %d alerts, %d reading in full:\n%+v\n%+v", name, len(got), len(want), got, want)
		}
	}
}

// A reader that cannot seek is read in full from the start.
func TestReaderCannotSeek(t *testing.T) {
	data := fixture(t, "attack-mixed.ami")
	_, want := full(t, data)
	res, got := replayed(t, struct{ io.Reader }{bytes.NewReader(data)})
	if res.Skipped != 0 || res.ReadTwice || !reflect.DeepEqual(got, want) {
		t.Errorf("result %+v, %d alerts, want %d", res, len(got), len(want))
	}
}

func TestFilesInOrder(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "missing.ami")
	paths := []string{
		transcripts + "attack-mixed.ami", transcripts + "pjsip-bruteforce.ami", missing,
		transcripts + "hangup-events.ami", transcripts + "attack-mixed.ami", transcripts + "pjsip-bruteforce.ami",
	}
	want := map[string][]detector.Alert{}
	for _, p := range paths[:2] {
		want[p] = nil
		if _, err := File(p, detector.Default(), func(a *detector.Alert) { want[p] = append(want[p], *a) }); err != nil {
			t.Fatal(err)
		}
	}
	var got []string
	Files(paths, detector.Default(), 3, func(fr *FileResult) bool {
		got = append(got, fr.Path)
		switch {
		case fr.Path == missing:
			if !errors.Is(fr.Err, os.ErrNotExist) {
				t.Errorf("%s: error %v", fr.Path, fr.Err)
			}
		case fr.Err != nil:
			t.Errorf("%s: %v", fr.Path, fr.Err)
		case fr.Result.Alerts != len(fr.Alerts) || len(fr.Alerts) == 0:
			t.Errorf("%s: %d alerts, result %+v", fr.Path, len(fr.Alerts), fr.Result)
		}
		if w, ok := want[fr.Path]; ok && !reflect.DeepEqual(fr.Alerts, w) {
			t.Errorf("%s: alerts differ from File's", fr.Path)
		}
		return true
	})
	if !reflect.DeepEqual(got, paths) {
		t.Errorf("results for %v, want %v", got, paths)
	}
}

func TestFilesStopsWhenDoneSaysSo(t *testing.T) {
	paths := make([]string, 20)
	for i := range paths {
		paths[i] = transcripts + "pjsip-bruteforce.ami"
	}
	calls := 0
	Files(paths, detector.Default(), 2, func(*FileResult) bool {
		calls++
		return calls < 3
	})
	if calls != 3 {
		t.Errorf("done called %d times, want 3", calls)
	}
}

// BenchmarkReplay replays attack-mixed.ami from memory, reading every
// message in full, then skipping the events the detector does not use.
// msgs/s counts every message, skipped ones included.
func BenchmarkReplay(b *testing.B) {
	data := fixture(b, "attack-mixed.ami")
	cfg := detector.Default()
	for _, bc := range []struct {
		name string
		skip bool
	}{{"read=full", false}, {"read=skip", true}} {
		b.Run(bc.name, func(b *testing.B) {
			var msgs int
			b.SetBytes(int64(len(data)))
			b.ReportAllocs()
			for b.Loop() {
				res, err := read(bytes.NewReader(data), cfg, bc.skip, 0, func(*detector.Alert) {})
				if err != nil || res.Alerts != 15 {
					b.Fatal(res, err)
				}
				msgs += res.Messages
			}
			b.ReportMetric(float64(msgs)/b.Elapsed().Seconds(), "msgs/s")
		})
	}
}

// BenchmarkFiles is `guard replay` over 50 copies of attack-mixed.ami less
// the JSON output: files read from disk (the page cache), side by side on
// every core.
func BenchmarkFiles(b *testing.B) {
	paths := make([]string, 50)
	for i := range paths {
		paths[i] = transcripts + "attack-mixed.ami"
	}
	cfg := detector.Default()
	var msgs int
	b.ReportAllocs()
	for b.Loop() {
		Files(paths, cfg, runtime.GOMAXPROCS(0), func(fr *FileResult) bool {
			if fr.Err != nil {
				b.Fatal(fr.Err)
			}
			msgs += fr.Result.Messages
			return true
		})
	}
	b.ReportMetric(float64(msgs)/b.Elapsed().Seconds(), "msgs/s")
}
