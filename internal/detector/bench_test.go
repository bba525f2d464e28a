package detector_test

import (
	"bytes"
	"errors"
	"io"
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/astguard/astguard/internal/ami"
	"github.com/astguard/astguard/internal/detector"
	"github.com/astguard/astguard/internal/replay"
)

// decodeAll returns the typed events of a transcript.
func decodeAll(tb testing.TB, file string) []ami.Event {
	tb.Helper()
	data, err := os.ReadFile(transcripts + file)
	if err != nil {
		tb.Fatal(err)
	}
	tr := ami.NewTranscript(bytes.NewReader(data))
	if _, err := tr.Banner(); err != nil {
		tb.Fatal(err)
	}
	var (
		m   ami.Message
		out []ami.Event
	)
	for {
		seq, ts, err := tr.Next(&m)
		if errors.Is(err, io.EOF) {
			return out
		}
		if err != nil {
			tb.Fatal(err)
		}
		var ev ami.Event
		if ami.Decode(&m, &ev) {
			ev.Seq, ev.Time = seq, ts
			out = append(out, ev)
		}
	}
}

// BenchmarkDetector feeds the typed events of attack-mixed.ami to one
// detector again and again, each pass shifted 30 s later, so the windows,
// cool-downs and call tracking run as they would on a long stream.
func BenchmarkDetector(b *testing.B) {
	evs := decodeAll(b, "attack-mixed.ami")
	times := make([]time.Time, len(evs))
	for i := range evs {
		times[i] = evs[i].Time
	}
	d := detector.New(detector.Default())
	out := make([]detector.Alert, 0, 16)
	var shift time.Duration
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		j := i % len(evs)
		if j == 0 && i > 0 {
			shift += 30 * time.Second
		}
		ev := &evs[j]
		ev.Time = times[j].Add(shift)
		out = d.Process(ev, out[:0])
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "events/s")
}

// BenchmarkReplay parses, decodes and detects over the bytes of
// attack-mixed.ami: the whole path from the socket's bytes to alerts.
func BenchmarkReplay(b *testing.B) {
	data, err := os.ReadFile(transcripts + "attack-mixed.ami")
	if err != nil {
		b.Fatal(err)
	}
	cfg := detector.Default()
	var msgs int
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		res, err := replay.Reader(bytes.NewReader(data), cfg, func(*detector.Alert) {})
		if err != nil {
			b.Fatal(err)
		}
		msgs += res.Messages
	}
	b.ReportMetric(float64(msgs)/b.Elapsed().Seconds(), "msgs/s")
}

// BenchmarkAuthFailuresIPv6 feeds failed authentications from an IPv6
// botnet: 4096 networks, each address used once (the attacker moves inside
// its /64 at every attempt), so the per-source state is looked up by
// network on every event.
func BenchmarkAuthFailuresIPv6(b *testing.B) {
	const nets = 4096
	evs := make([]ami.Event, nets*16)
	start := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	for i := range evs {
		a := [16]byte{0x20, 0x01, 0x0d, 0xb8, 0, 0, byte(i % nets >> 8), byte(i % nets)}
		a[15], a[14] = byte(i), byte(i>>8)
		evs[i] = ami.Event{Kind: ami.KindSecurity, Security: ami.SecInvalidPassword, Service: "SIP",
			AccountID: "200", RemoteAddr: netip.AddrFrom16(a), RemotePort: 5060}
	}
	d := detector.New(detector.Default())
	out := make([]detector.Alert, 0, 16)
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		ev := &evs[i%len(evs)]
		ev.Time = start.Add(time.Duration(i) * time.Millisecond)
		out = d.Process(ev, out[:0])
	}
}
