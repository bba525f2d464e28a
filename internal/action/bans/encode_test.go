package bans

import (
	"bytes"
	"encoding/json"
	"net/netip"
	"testing"
	"time"
)

// encodingJSON is what encoding/json writes for v without HTML escaping.
func encodingJSON(t testing.TB, v any) []byte {
	t.Helper()
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		t.Fatal(err)
	}
	return bytes.TrimSuffix(buf.Bytes(), []byte("\n"))
}

var encodeCases = []Ban{
	{Prefix: netip.MustParsePrefix("203.0.113.7/32"), Since: t0, Until: t0.Add(time.Hour), Reason: "auth_failures critical: 5 failed authentications in 1m",
		Rule: "auth_failures", Extension: "SIP/200", Origin: OriginAstguard, Incident: "inc-3f9a0c12"},
	{Prefix: netip.MustParsePrefix("2001:db8:1:2::/64"), Since: t0.Add(123456789), Reason: "", DryRun: true, Origin: "crowdsec"},
	{Prefix: netip.MustParsePrefix("::ffff:198.51.100.0/120"), Since: time.Date(2026, 1, 2, 3, 4, 5, 6, time.FixedZone("x", 3600)),
		Reason: "quote \" backslash \\ newline \n tab \t nul \x00 bell \x07 del \x7f <html> & é 漢 \u2028 \u2029 bad \xff\xfe end", Origin: OriginAstguard},
}

func TestAppendBanIsEncodingJSON(t *testing.T) {
	for _, b := range encodeCases {
		if got, want := appendBan(nil, &b), encodingJSON(t, &b); !bytes.Equal(got, want) {
			t.Errorf("appendBan\n got %s\nwant %s", got, want)
		}
	}
	p := netip.MustParsePrefix("203.0.113.7/32")
	for _, r := range []record{{Ban: &encodeCases[0]}, {Lift: &p}, {Incidents: json.RawMessage(`[{"id":"inc-1"}]`)}} {
		got, want := appendRecord(nil, &r), append(encodingJSON(t, &r), '\n')
		if !bytes.Equal(got, want) {
			t.Errorf("appendRecord\n got %s\nwant %s", got, want)
		}
	}
}

func FuzzAppendString(f *testing.F) {
	for _, b := range encodeCases {
		f.Add(b.Reason)
	}
	f.Fuzz(func(t *testing.T, s string) {
		got, want := appendString(nil, s), encodingJSON(t, s)
		if !bytes.Equal(got, want) {
			t.Fatalf("appendString(%q)\n got %s\nwant %s", s, got, want)
		}
	})
}

func BenchmarkAppendBan(b *testing.B) {
	ban := encodeCases[0]
	var buf []byte
	b.ReportAllocs()
	for range b.N {
		buf = appendBan(buf[:0], &ban)
	}
}

func BenchmarkEncodingJSONBan(b *testing.B) {
	ban := encodeCases[0]
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	b.ReportAllocs()
	for range b.N {
		buf.Reset()
		_ = enc.Encode(&ban)
	}
}

// decodeBans, when it succeeds, decodes as encoding/json does (strictly),
// on what appendBan writes and on anything the fuzzer makes of it.
func FuzzDecodeBans(f *testing.F) {
	var doc []byte
	doc = append(doc, '[')
	for i := range encodeCases {
		if i > 0 {
			doc = append(doc, ",\n"...)
		}
		doc = appendBan(doc, &encodeCases[i])
	}
	doc = append(doc, ']')
	f.Add(doc)
	f.Add([]byte(`[]`))
	f.Add([]byte(` [ {"prefix":"203.0.113.7/32", "since":"2026-03-01T12:00:00Z","reason":"a\tb\"c","dry_run":true,"origin":"x"} ] `))
	f.Add([]byte(`[{"Prefix":"203.0.113.7/32"}]`))
	f.Add([]byte(`[{"prefix":"203.0.113.7/32","prefix":"203.0.113.8/32"}]`))
	f.Add([]byte(`[{"prefix":"203.0.113.7/32",}]`))
	f.Fuzz(func(t *testing.T, data []byte) {
		got, err := decodeBans(data)
		if err != nil {
			return // encoding/json decides
		}
		var want []Ban
		if err := strictDecode(data, &want); err != nil {
			t.Fatalf("decodeBans accepted %q, encoding/json refuses it: %v", data, err)
		}
		if len(got) != len(want) {
			t.Fatalf("decodeBans %d bans, encoding/json %d", len(got), len(want))
		}
		for i := range got {
			g, w := got[i], want[i]
			if g.Prefix != w.Prefix || !g.Since.Equal(w.Since) || !g.Until.Equal(w.Until) || g.Since.IsZero() != w.Since.IsZero() ||
				g.Reason != w.Reason || g.Rule != w.Rule || g.Extension != w.Extension || g.DryRun != w.DryRun ||
				g.Origin != w.Origin || g.Incident != w.Incident {
				t.Fatalf("ban %d of %q: decodeBans %+v, encoding/json %+v", i, data, g, w)
			}
		}
	})
}

func BenchmarkDecodeBans(b *testing.B) {
	doc := []byte{'['}
	for i := range 1000 {
		if i > 0 {
			doc = append(doc, ",\n"...)
		}
		doc = appendBan(doc, &encodeCases[i%2]) // the third has escapes the fast decoder leaves to encoding/json
	}
	doc = append(doc, ']')
	b.Run("fast", func(b *testing.B) {
		for range b.N {
			if _, err := decodeBans(doc); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("encoding/json", func(b *testing.B) {
		for range b.N {
			var bs []Ban
			if err := strictDecode(doc, &bs); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// decodeRecord, when it succeeds, decodes a journal line as encoding/json
// does.
func FuzzDecodeRecord(f *testing.F) {
	p := netip.MustParsePrefix("2001:db8:1:2::/64")
	for _, r := range []record{{Ban: &encodeCases[0]}, {Lift: &p}, {Incidents: json.RawMessage(`[]`)}} {
		f.Add(bytes.TrimSuffix(appendRecord(nil, &r), []byte("\n")))
	}
	f.Add([]byte(`{"lift":""}`))
	f.Add([]byte(`{"ban":{"prefix":"203.0.113.7/32"},"lift":"203.0.113.7/32"}`))
	f.Fuzz(func(t *testing.T, line []byte) {
		got, ok := decodeRecord(line)
		if !ok {
			return
		}
		var want record
		if err := strictDecode(line, &want); err != nil {
			t.Fatalf("decodeRecord accepted %q, encoding/json refuses it: %v", line, err)
		}
		switch {
		case got.Lift != nil:
			if want.Lift == nil || *got.Lift != *want.Lift || want.Ban != nil || want.Incidents != nil {
				t.Fatalf("%q: decodeRecord lift %v, encoding/json %+v", line, *got.Lift, want)
			}
		case got.Ban != nil:
			if want.Ban == nil || want.Lift != nil || want.Incidents != nil {
				t.Fatalf("%q: decodeRecord ban, encoding/json %+v", line, want)
			}
			g, w := *got.Ban, *want.Ban
			if g.Prefix != w.Prefix || !g.Since.Equal(w.Since) || !g.Until.Equal(w.Until) || g.Reason != w.Reason || g.Rule != w.Rule ||
				g.Extension != w.Extension || g.DryRun != w.DryRun || g.Origin != w.Origin || g.Incident != w.Incident {
				t.Fatalf("%q: decodeRecord %+v, encoding/json %+v", line, g, w)
			}
		default:
			t.Fatalf("%q: decodeRecord returned an empty record", line)
		}
	})
}
