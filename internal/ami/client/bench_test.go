package client_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/astguard/astguard/internal/ami"
	"github.com/astguard/astguard/internal/ami/client"
)

// benchFrames returns the messages of attack-mixed.ami (a real Asterisk 20
// session) as they were on the wire, without the recorder's TimeReceived,
// and the end offset of each. With masked, only those a session logged in
// with `Events: call,security,system` gets (the guard's event session).
func benchFrames(b *testing.B, masked bool) ([]byte, []int) {
	b.Helper()
	data, err := os.ReadFile("../../../testdata/transcripts/attack-mixed.ami")
	if err != nil {
		b.Fatal(err)
	}
	r := ami.NewReader(bytes.NewReader(data), ami.ReaderOptions{})
	if _, err := r.ReadBanner(); err != nil {
		b.Fatal(err)
	}
	var (
		out  []byte
		ends []int
		m    ami.Message
	)
	for {
		err := r.Next(&m)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			b.Fatal(err)
		}
		if masked && m.IsEvent() {
			class, _, _ := strings.Cut(m.Get("Privilege"), ",")
			if class != "call" && class != "security" && class != "system" {
				continue
			}
		}
		for i := 0; i < m.Len(); i++ {
			if string(m.Key(i)) == "TimeReceived" {
				continue
			}
			out = append(out, m.Key(i)...)
			out = append(out, ": "...)
			out = append(out, m.Value(i)...)
			out = append(out, "\r\n"...)
		}
		out = append(out, "\r\n"...)
		ends = append(ends, len(out))
	}
	return out, ends
}

// benchWanted are the events the guard decodes (internal/guard's list).
var benchWanted = map[string]bool{
	"Newchannel": true, "DialBegin": true, "DialEnd": true, "Dial": true, "Hangup": true,
	"PeerStatus": true, "ContactStatus": true, "FullyBooted": true,
	"InvalidAccountID": true, "FailedACL": true, "InvalidPassword": true, "ChallengeResponseFailed": true,
	"ChallengeSent": true, "SuccessfulAuth": true, "RequestNotAllowed": true, "RequestBadFormat": true,
}

// BenchmarkEventPath is the client's event path as the guard uses it:
// bytes on a loopback socket -> reader -> Skip by name -> Decode into a
// pooled ami.Event -> a bounded queue, drained by a consumer that only
// returns the events to the pool. One op is one message on the wire.
func BenchmarkEventPath(b *testing.B) {
	for _, bc := range []struct {
		name   string
		masked bool
	}{{"masked", true}, {"all", false}} {
		b.Run(bc.name, func(b *testing.B) { benchEventPath(b, bc.masked) })
	}
}

func benchEventPath(b *testing.B, masked bool) {
	frames, ends := benchFrames(b, masked)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	start := make(chan int)
	var serverWG sync.WaitGroup
	serverWG.Add(1)
	go func() { // the server: banner, login, then exactly n messages
		defer serverWG.Done()
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		c.Write([]byte("Asterisk Call Manager/9.0.0\r\n"))
		r := ami.NewReader(c, ami.ReaderOptions{})
		var m ami.Message
		if r.Next(&m) != nil {
			return
		}
		c.Write([]byte("Response: Success\r\nActionID: " + m.Get("ActionID") + "\r\nMessage: Authentication accepted\r\n\r\n"))
		go io.Copy(io.Discard, c) // pings, if any
		for n := range start {
			for n > 0 {
				k := min(n, len(ends))
				if _, err := c.Write(frames[:ends[k-1]]); err != nil {
					return
				}
				n -= k
			}
		}
	}()

	var pool = sync.Pool{New: func() any { return new(ami.Event) }}
	queue := make(chan *ami.Event, 65536)
	var decoded, dropped atomic.Int64
	go func() {
		for ev := range queue {
			pool.Put(ev)
		}
	}()
	defer close(queue)
	c, err := client.New(client.Options{Address: ln.Addr().String(), Username: "guard", Secret: "x", Auth: client.AuthPlain,
		Events: "call,security,system", Logger: zerolog.Nop(),
		Skip: func(name []byte) bool { return !benchWanted[string(name)] },
		Handler: func(m *ami.Message, _ time.Time) {
			ev := pool.Get().(*ami.Event)
			if !ami.Decode(m, ev) {
				pool.Put(ev)
				return
			}
			decoded.Add(1)
			select {
			case queue <- ev:
			default:
				pool.Put(ev)
				dropped.Add(1)
			}
		}})
	if err != nil {
		b.Fatal(err)
	}
	defer func() {
		c.Close()
		ln.Close()
		close(start)
		serverWG.Wait()
	}()
	for !c.Connected() {
		time.Sleep(time.Millisecond)
	}
	base := c.Stats().Messages
	b.ReportAllocs()
	b.SetBytes(int64(len(frames) / len(ends)))
	b.ResetTimer()
	start <- b.N
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	for c.Stats().Messages-base < uint64(b.N) {
		if ctx.Err() != nil {
			b.Fatalf("read %d of %d messages", c.Stats().Messages-base, b.N)
		}
		time.Sleep(50 * time.Microsecond)
	}
	b.StopTimer()
	b.ReportMetric(float64(decoded.Load())/float64(b.N), "decoded/op")
	b.ReportMetric(float64(dropped.Load()), "dropped")
}
