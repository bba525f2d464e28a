package bans

import (
	"bytes"
	"errors"
	"net/netip"
	"unicode/utf8"
)

// errSlowPath: the fast decoder met something it leaves to encoding/json.
var errSlowPath = errors.New("not in the fast decoder's form")

// decodeBans decodes a JSON array of bans as the guard writes them (what
// appendBan writes, any whitespace between the values), without
// reflection: reading 100,000 bans at start takes a fifth of the time. It
// is conservative: anything else (an escape it does not know, a null, an
// unknown or repeated field, a number) returns errSlowPath, and the caller
// decodes with encoding/json, which then says what is wrong, if anything.
// When it succeeds its result is encoding/json's (fuzzed).
func decodeBans(data []byte) ([]Ban, error) {
	d := decoder{data: data}
	d.space()
	if !d.take('[') {
		return nil, errSlowPath
	}
	var out []Ban
	d.space()
	if d.take(']') {
		return out, d.end()
	}
	for {
		var b Ban
		if err := d.ban(&b); err != nil {
			return nil, err
		}
		out = append(out, b)
		d.space()
		if d.take(']') {
			return out, d.end()
		}
		if !d.take(',') {
			return nil, errSlowPath
		}
	}
}

type decoder struct {
	data []byte
	i    int
}

func (d *decoder) space() {
	for d.i < len(d.data) {
		switch d.data[d.i] {
		case ' ', '\t', '\n', '\r':
			d.i++
		default:
			return
		}
	}
}

func (d *decoder) take(c byte) bool {
	if d.i < len(d.data) && d.data[d.i] == c {
		d.i++
		return true
	}
	return false
}

func (d *decoder) end() error {
	d.space()
	if d.i != len(d.data) {
		return errSlowPath
	}
	return nil
}

// ban decodes one ban object; every field at most once.
func (d *decoder) ban(b *Ban) error {
	d.space()
	if !d.take('{') {
		return errSlowPath
	}
	d.space()
	if d.take('}') {
		return nil
	}
	var seen uint16
	for {
		d.space()
		key, ok := d.str()
		if !ok {
			return errSlowPath
		}
		d.space()
		if !d.take(':') {
			return errSlowPath
		}
		d.space()
		f := field(key)
		if f < 0 || seen&(1<<f) != 0 {
			return errSlowPath
		}
		seen |= 1 << f
		if err := d.field(b, f); err != nil {
			return err
		}
		d.space()
		if d.take('}') {
			return nil
		}
		if !d.take(',') {
			return errSlowPath
		}
	}
}

// field decodes the value of field f of b.
func (d *decoder) field(b *Ban, f int) error {
	if f == fDryRun {
		switch {
		case d.word("true"):
			b.DryRun = true
		case d.word("false"):
			b.DryRun = false
		default:
			return errSlowPath
		}
		return nil
	}
	v, ok := d.str()
	if !ok {
		return errSlowPath
	}
	var err error
	switch f {
	case fPrefix:
		err = b.Prefix.UnmarshalText(v)
	case fSince:
		err = b.Since.UnmarshalText(v)
	case fUntil:
		err = b.Until.UnmarshalText(v)
	case fReason:
		b.Reason = string(v)
	case fRule:
		b.Rule = string(v)
	case fExtension:
		b.Extension = string(v)
	case fOrigin:
		b.Origin = intern(v)
	case fIncident:
		b.Incident = string(v)
	}
	if err != nil {
		return errSlowPath
	}
	return nil
}

// The fields of Ban.
const (
	fPrefix = iota
	fSince
	fUntil
	fReason
	fRule
	fExtension
	fDryRun
	fOrigin
	fIncident
)

// field returns the field named key, or -1.
func field(key []byte) int {
	switch string(key) {
	case "prefix":
		return fPrefix
	case "since":
		return fSince
	case "until":
		return fUntil
	case "reason":
		return fReason
	case "rule":
		return fRule
	case "extension":
		return fExtension
	case "dry_run":
		return fDryRun
	case "origin":
		return fOrigin
	case "incident":
		return fIncident
	}
	return -1
}

// intern returns the common origins without a new string each.
func intern(v []byte) string {
	if string(v) == OriginAstguard {
		return OriginAstguard
	}
	return string(v)
}

func (d *decoder) word(w string) bool {
	if len(d.data)-d.i >= len(w) && string(d.data[d.i:d.i+len(w)]) == w {
		d.i += len(w)
		return true
	}
	return false
}

// str decodes a string holding valid UTF-8 and no escape but \" \\ \n
// \r \t; anything else is left to encoding/json. The bytes are data's
// when there is no escape.
func (d *decoder) str() ([]byte, bool) {
	if !d.take('"') {
		return nil, false
	}
	start := d.i
	var buf []byte // only when there is an escape
	for d.i < len(d.data) {
		c := d.data[d.i]
		switch {
		case c == '"':
			s := d.data[start:d.i]
			d.i++
			if buf != nil {
				s = append(buf, s...)
			}
			if !utf8.Valid(s) {
				return nil, false
			}
			return s, true
		case c == '\\':
			if d.i+1 >= len(d.data) {
				return nil, false
			}
			var r byte
			switch d.data[d.i+1] {
			case '"':
				r = '"'
			case '\\':
				r = '\\'
			case 'n':
				r = '\n'
			case 'r':
				r = '\r'
			case 't':
				r = '\t'
			default:
				return nil, false
			}
			buf = append(append(buf, d.data[start:d.i]...), r)
			d.i += 2
			start = d.i
		case c < 0x20:
			return nil, false
		default:
			d.i++
		}
	}
	return nil, false
}

// decodeRecord decodes a journal line of a ban or a lift as the guard
// writes it (appendRecord), as decodeBans does: ok is false for anything
// else, which encoding/json then decodes.
func decodeRecord(line []byte) (r record, ok bool) {
	switch {
	case bytes.HasPrefix(line, []byte(`{"ban":`)) && bytes.HasSuffix(line, []byte("}")):
		d := decoder{data: line[len(`{"ban":`) : len(line)-1]}
		var b Ban
		if d.ban(&b) != nil || d.end() != nil {
			return record{}, false
		}
		return record{Ban: &b}, true
	case len(line) > len(`{"lift":""}`) && bytes.HasPrefix(line, []byte(`{"lift":"`)) && bytes.HasSuffix(line, []byte(`"}`)):
		var p netip.Prefix
		text := line[len(`{"lift":"`) : len(line)-2]
		if bytes.ContainsAny(text, `"\`) || len(text) == 0 || p.UnmarshalText(text) != nil {
			return record{}, false
		}
		return record{Lift: &p}, true
	}
	return record{}, false
}
