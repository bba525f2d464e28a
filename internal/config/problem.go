package config

import (
	"errors"
	"fmt"
	"slices"
	"strings"
)

// Problem is one thing wrong in a configuration: its text names the key,
// and Load adds the file and the line where the key is written.
type Problem struct {
	// File is the configuration file ("" for Parse).
	File string
	// Line is the line (from 1) where Key is written; 0 when the key is not
	// in the file (a default value) or the problem is about no key.
	Line int
	// Key is the dotted key the problem is about, with "[i]" for the i-th
	// item of a list (from 0), as in the text; "" when it is about no key
	// of the file (ASTGUARD_AMI_SECRET).
	Key string
	// Text is the sentence, starting with the key:
	// `allow.networks[0]: "0.0.0.0/0" is wider than /8 ...`.
	Text string
}

// Error is "FILE:LINE: TEXT", "FILE: TEXT" when the key is not in the
// file, or TEXT alone when there is no file or no key.
func (p *Problem) Error() string {
	switch {
	case p.File == "" || p.Key == "":
		return p.Text
	case p.Line > 0:
		return fmt.Sprintf("%s:%d: %s", p.File, p.Line, p.Text)
	}
	return p.File + ": " + p.Text
}

// Problems returns the problems an error of Load or Parse holds, in order
// (none for a syntax error or an unreadable file).
func Problems(err error) []*Problem {
	var out []*Problem
	var walk func(error)
	walk = func(err error) {
		if p, ok := err.(*Problem); ok {
			out = append(out, p)
			return
		}
		if j, ok := err.(interface{ Unwrap() []error }); ok {
			for _, e := range j.Unwrap() {
				walk(e)
			}
		}
	}
	walk(err)
	return out
}

// locate turns every error of errs into a Problem of file, with the key its
// text starts with and the line where src (the file's text) writes that
// key: for an item of a list its own line, else the key's. When the key is
// not in the file (a default), the line is that of the first other key the
// text names that is: "detector.idle_expiry (1h) must not be shorter than
// detector.prefix_guess.window (2h)" points at the window when only it was
// set. With a file, the problems are in the order of their lines (those
// without one first); without, in the order of errs. The result is the
// errors joined, or nil.
func locate(file string, src []byte, errs []error) error {
	if len(errs) == 0 {
		return nil
	}
	lines := keyLines(string(src))
	out := make([]error, 0, len(errs))
	for _, err := range errs {
		p := &Problem{File: file, Text: err.Error()}
		p.Key = keyOf(p.Text)
		if p.Key != "" {
			p.Line = lines[p.Key]
			if p.Line == 0 {
				base, _, _ := strings.Cut(p.Key, "[")
				p.Line = lines[base]
			}
			for _, w := range strings.Fields(p.Text) {
				if p.Line != 0 {
					break
				}
				k := strings.Trim(w, ":,;()")
				if kd, ok := schema[k]; ok && kd != kindTable {
					p.Line = lines[k]
				}
			}
		}
		out = append(out, p)
	}
	if file != "" {
		slices.SortStableFunc(out, func(a, b error) int { return a.(*Problem).Line - b.(*Problem).Line })
	}
	return errors.Join(out...)
}

// unknownKey starts the text of a key the configuration does not have.
const unknownKey = "unknown key "

// keyOf returns the key a problem's text starts with: the dotted key of
// the schema, with its "[i]" when there is one, or the key after "unknown
// key ". "" when the text starts with no key.
func keyOf(text string) string {
	if k, ok := strings.CutPrefix(text, unknownKey); ok {
		return k
	}
	end := 0
	for end < len(text) && isKeyByte(text[end]) {
		end++
	}
	key := text[:end]
	if _, ok := schema[key]; !ok {
		return ""
	}
	if rest := text[end:]; strings.HasPrefix(rest, "[") {
		if i := strings.IndexByte(rest, ']'); i > 1 && isDigits(rest[1:i]) {
			key += rest[:i+1]
		}
	}
	return key
}

// isKeyByte reports whether b can be part of a bare dotted key.
func isKeyByte(b byte) bool {
	return b >= 'a' && b <= 'z' || b >= 'A' && b <= 'Z' || b >= '0' && b <= '9' || b == '_' || b == '-' || b == '.'
}
