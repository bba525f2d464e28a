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
