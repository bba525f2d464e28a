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

func BenchmarkReader(b *testing.B) {
	data := readFixture(b, "attack-mixed.ami")
	src := bytes.NewReader(data)
	r := NewReader(src, ReaderOptions{})
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
	if n != 4093 {
		b.Fatalf("read %d messages", n)
	}
	reportMsgs(b, n)
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
