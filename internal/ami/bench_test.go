package ami

import (
	"bytes"
	"io"
	"testing"
)

// reportMsgs reports messages per second, perOp messages being read per op.
func reportMsgs(b *testing.B, perOp int) {
	b.ReportMetric(float64(b.N*perOp)/b.Elapsed().Seconds(), "msgs/s")
}

// skipUnused is the Skip of a reader feeding Decode: every event it does
// not use.
func skipUnused(name []byte) bool { return !UsedEvent(name) }

// BenchmarkReader reads attack-mixed.ami in full, then skipping the events
// Decode does not use (93 % of its messages). msgs/s counts every message,
// skipped ones included.
func BenchmarkReader(b *testing.B) {
	data := readFixture(b, "attack-mixed.ami")
	for _, bc := range []struct {
		name        string
		opts        ReaderOptions
		read, wantN int
	}{
		{"read=full", ReaderOptions{}, 4093, 4093},
		{"read=skip", ReaderOptions{Skip: skipUnused}, 4093, 364}, // 363 events and the login response
	} {
		b.Run(bc.name, func(b *testing.B) {
			src := bytes.NewReader(data)
			r := NewReader(src, bc.opts)
			var m Message
			n := 0
			b.SetBytes(int64(len(data)))
			b.ReportAllocs()
			for b.Loop() {
				src.Reset(data)
				r.Reset(src)
				if _, err := r.ReadBanner(); err != nil {
					b.Fatal(err)
				}
				n = 0
				for {
					err := r.Next(&m)
					if err == io.EOF {
						break
					}
					if err != nil {
						b.Fatal(err)
					}
					n++
				}
			}
			if st := r.Stats(); n != bc.wantN || int(st.Messages+st.Skipped) != bc.read {
				b.Fatalf("read %d messages, stats %+v", n, st)
			}
			reportMsgs(b, bc.read)
		})
	}
}

func BenchmarkTranscript(b *testing.B) {
	data := readFixture(b, "attack-mixed.ami")
	src := bytes.NewReader(data)
	tr := NewTranscript(src)
	var m Message
	n := 0
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	for b.Loop() {
		src.Reset(data)
		tr.Reset(src)
		n = 0
		for {
			_, _, err := tr.Next(&m)
			if err == io.EOF {
				break
			}
			if err != nil {
				b.Fatal(err)
			}
			n++
		}
	}
	if n != 4093 {
		b.Fatalf("read %d messages", n)
	}
	reportMsgs(b, n)
}

// BenchmarkTranscriptDecode is the whole input stage of a replay: read,
// time and decode every message of attack-mixed.ami.
func BenchmarkTranscriptDecode(b *testing.B) {
	data := readFixture(b, "attack-mixed.ami")
	src := bytes.NewReader(data)
	tr := NewTranscript(src)
	var (
		m  Message
		ev Event
	)
	n, decoded := 0, 0
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	for b.Loop() {
		src.Reset(data)
		tr.Reset(src)
		n, decoded = 0, 0
		for {
			seq, tm, err := tr.Next(&m)
			if err == io.EOF {
				break
			}
			if err != nil {
				b.Fatal(err)
			}
			n++
			if Decode(&m, &ev) {
				ev.Seq, ev.Time = seq, tm
				decoded++
			}
		}
	}
	b.ReportMetric(float64(decoded), "events/op")
	reportMsgs(b, n)
}

func BenchmarkDecode(b *testing.B) {
	for _, bc := range []struct{ name, frame string }{
		{"Unknown", frameVarSet},
		{"DialBegin", frameDialBegin},
		{"Hangup", frameHangup},
		{"InvalidPassword", frameInvalidPassword},
	} {
		b.Run(bc.name, func(b *testing.B) {
			m := readOne(b, crlf(bc.frame))
			var ev Event
			b.SetBytes(int64(len(m.Raw())))
			b.ReportAllocs()
			for b.Loop() {
				Decode(m, &ev)
			}
		})
	}
}

func BenchmarkParseChannel(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		ParseChannel("SIP/office-200-0000001a")
	}
}
