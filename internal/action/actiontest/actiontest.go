// Package actiontest helps the actions' tests: a fake AMI doer that answers
// from a script, and the replies a real Asterisk gave, read from the
// recorded dialogs in internal/ami/amitest/testdata.
package actiontest

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/astguard/astguard/internal/ami"
)

// Reply is one answer of the fake: the first reply, a list's items, or an
// error that stands for the transport failing (no reply at all).
type Reply struct {
	Resp  ami.Response
	Items []ami.Response
	Err   error
}

// Doer is a fake AMI client with the shape of client.Client's Do and List.
// Each action goes to Answer; like the real session, a reply whose
// Response is not Success (or Follows, Goodbye) comes back with an
// *ami.ActionError. It records every action it was given. Safe for
// concurrent use.
type Doer struct {
	Answer func(a ami.Action) Reply

	mu   sync.Mutex
	sent []ami.Action
}

// Do answers a with Answer's reply.
func (d *Doer) Do(ctx context.Context, a ami.Action) (ami.Response, error) {
	resp, _, err := d.answer(ctx, a)
	return resp, err
}

// List answers a with Answer's reply and list items.
func (d *Doer) List(ctx context.Context, a ami.Action) (ami.Response, []ami.Response, error) {
	return d.answer(ctx, a)
}

func (d *Doer) answer(ctx context.Context, a ami.Action) (ami.Response, []ami.Response, error) {
	d.mu.Lock()
	d.sent = append(d.sent, a)
	d.mu.Unlock()
	if err := ctx.Err(); err != nil {
		return ami.Response{}, nil, err
	}
	r := d.Answer(a)
	if r.Err != nil {
		return r.Resp, r.Items, r.Err
	}
	if !r.Resp.OK() {
		return r.Resp, nil, &ami.ActionError{Action: a.Name, Message: r.Resp.Message()}
	}
	return r.Resp, r.Items, nil
}

// Sent returns the actions sent so far, in order.
func (d *Doer) Sent() []ami.Action {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]ami.Action(nil), d.sent...)
}

// Count returns how many actions named name were sent.
func (d *Doer) Count(name string) int {
	n := 0
	for _, a := range d.Sent() {
		if a.Name == name {
			n++
		}
	}
	return n
}

// Header returns the value of a's header key ("" when absent).
func Header(a ami.Action, key string) string {
	for _, h := range a.Headers {
		if h.Key == key {
			return h.Value
		}
	}
	return ""
}

// Dialog is a recorded AMI session: what a real Asterisk answered, by the
// ActionID the client sent.
type Dialog struct {
	name    string
	replies map[string]Reply
}

// LoadDialog reads a dialog of internal/ami/amitest/testdata, e.g.
// "asterisk-20/actions-dialog.txt": lines `>>> ` sent, `<<< ` received, one
// AMI line each, a blank one ending a message.
func LoadDialog(t testing.TB, name string) *Dialog {
	t.Helper()
	root, err := moduleRoot()
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(filepath.Join(root, "internal", "ami", "amitest", "testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	d := &Dialog{name: name, replies: map[string]Reply{}}
	var msg map[string]string
	var order []string
	flush := func() {
		if len(msg) == 0 {
			return
		}
		aid := msg["ActionID"]
		switch {
		case aid == "":
		case msg["Response"] != "":
			var resp ami.Response
			for _, k := range order {
				if k != "ActionID" {
					resp.Headers = append(resp.Headers, ami.Header{Key: k, Value: msg[k]})
				}
			}
			d.replies[aid] = Reply{Resp: resp}
		case msg["EventList"] == "Complete" || strings.HasSuffix(msg["Event"], "Complete"):
		case msg["Event"] == "": // not a message of the session's own
		default: // a list item, as client.Client.List gives it
			r := d.replies[aid]
			var item ami.Response
			for _, k := range order {
				item.Headers = append(item.Headers, ami.Header{Key: k, Value: msg[k]})
			}
			r.Items = append(r.Items, item)
			d.replies[aid] = r
		}
		msg, order = nil, nil
	}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line, ok := strings.CutPrefix(sc.Text(), "<<< ")
		if !ok {
			if strings.HasPrefix(sc.Text(), "<<<") { // "<<<" alone: the blank line
				flush()
			}
			continue
		}
		if line == "" {
			flush()
			continue
		}
		k, v, ok := strings.Cut(line, ": ")
		if !ok {
			k, v, _ = strings.Cut(line, ":")
		}
		if msg == nil {
			msg = map[string]string{}
		}
		if _, dup := msg[k]; !dup {
			order = append(order, k)
		}
		msg[k] = v
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	flush()
	return d
}

// Reply returns what Asterisk answered the action with ActionID aid: its
// first reply (without ActionID) and, for a list, its items. The test
// fails if the dialog has no such reply.
func (d *Dialog) Reply(t testing.TB, aid string) Reply {
	t.Helper()
	r, ok := d.replies[aid]
	if !ok {
		t.Fatalf("%s has no reply to ActionID %s", d.name, aid)
	}
	return r
}

// moduleRoot is the directory of go.mod above the working directory (a
// test runs in its package's directory).
func moduleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("no go.mod above the working directory")
		}
		dir = parent
	}
}

// GetConfig builds the reply of GetConfig as Asterisk writes it
// (Category-000000, Line-000000-000000: key=value) from a config file's
// text: `[name]` (or `[name](template)`) starts a section, `key=value` or
// `key => value` lines follow, `;` starts a comment. With category, only
// the sections of that name.
func GetConfig(conf, category string) ami.Response {
	resp := ami.Response{Headers: []ami.Header{{Key: "Response", Value: "Success"}}}
	cat, line := -1, 0
	skip := false
	for l := range strings.Lines(conf) {
		if i := strings.IndexByte(l, ';'); i >= 0 {
			l = l[:i]
		}
		l = strings.TrimSpace(l)
		if l == "" {
			continue
		}
		if strings.HasPrefix(l, "[") {
			name, _, _ := strings.Cut(l[1:], "]")
			skip = category != "" && name != category
			if !skip {
				cat++
				line = 0
				resp.Headers = append(resp.Headers, ami.Header{Key: fmt.Sprintf("Category-%06d", cat), Value: name})
			}
			continue
		}
		if skip || cat < 0 {
			continue
		}
		k, v, ok := strings.Cut(l, "=")
		if !ok {
			continue
		}
		v = strings.TrimPrefix(v, ">")
		resp.Headers = append(resp.Headers, ami.Header{Key: fmt.Sprintf("Line-%06d-%06d", cat, line), Value: strings.TrimSpace(k) + "=" + strings.TrimSpace(v)})
		line++
	}
	return resp
}

// With returns a copy of r in which the header key of every list item
// whose Event is event holds value (the recorded PJSIPShowEndpoint with
// another password in its AuthDetail, say).
func (r Reply) With(event, key, value string) Reply {
	out := Reply{Resp: r.Resp, Err: r.Err, Items: make([]ami.Response, len(r.Items))}
	for i, it := range r.Items {
		hs := append([]ami.Header(nil), it.Headers...)
		if it.Get("Event") == event {
			for j := range hs {
				if strings.EqualFold(hs[j].Key, key) {
					hs[j].Value = value
				}
			}
		}
		out.Items[i] = ami.Response{Headers: hs}
	}
	return out
}
