package sqlstore

import (
	"context"
	"database/sql"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/astguard/astguard/internal/action"
	"github.com/astguard/astguard/internal/action/actiontest"
	"github.com/astguard/astguard/internal/action/secret"
	"github.com/astguard/astguard/internal/ami"
	"github.com/astguard/astguard/internal/testenv"
	"github.com/astguard/astguard/internal/testenv/testdb"
)

// freepbxBox is a FreePBX database (FreePBX core's sip table with its
// four extensions, in MariaDB), the guard's user with the README's
// grants, a stand-in for `fwconsole reload`, and an Asterisk that
// shows what the last reload wrote from the table.
type freepbxBox struct {
	srv    *testdb.Server
	name   string
	su     *sql.DB // the superuser, on the test's database
	user   string
	pass   string
	script string
	record string
	ast    *asterisk
	doer   *actiontest.Doer

	mu     sync.Mutex
	loaded map[string]string // id -> secret, as the last reload wrote the files
	seen   int               // reload lines seen
}

func newFreePBX(t *testing.T, reloadStatus int, reloadOut string) *freepbxBox {
	t.Helper()
	s := testdb.StartMariaDB(t)
	b := &freepbxBox{srv: s}
	b.name = s.NewDatabase(t, readFile(t, "testdata/freepbx-schema.sql"))
	b.su = s.Superuser(t, b.name)
	b.user, b.pass = s.NewUser(t, b.name, readmeGrants(t, "ON asterisk.sip TO")...)
	b.script, b.record = reloadScript(t, reloadStatus, reloadOut)
	b.loaded = b.secrets(t)
	b.ast = &asterisk{
		password: func() (string, bool) {
			pw, ok := b.asLoaded(t)["300"]
			return pw, ok
		},
		file: func(name string) (string, bool) {
			if name != "sip_additional.conf" {
				return "", false
			}
			var conf strings.Builder
			for id, sec := range b.asLoaded(t) {
				conf.WriteString("[" + id + "]\ntype=friend\nsecret=" + sec + "\n")
			}
			return conf.String(), true
		},
	}
	b.doer = b.ast.doer(t)
	return b
}

// secrets reads every secret row.
func (b *freepbxBox) secrets(t *testing.T) map[string]string {
	m := map[string]string{}
	rs, err := b.su.Query("SELECT id, data FROM sip WHERE keyword = 'secret'")
	if err != nil {
		t.Error(err)
		return m
	}
	defer rs.Close()
	for rs.Next() {
		var id, v string
		if err := rs.Scan(&id, &v); err != nil {
			t.Error(err)
		}
		m[id] = v
	}
	return m
}

// asLoaded returns the secrets as of the last reload that succeeded.
func (b *freepbxBox) asLoaded(t *testing.T) map[string]string {
	b.mu.Lock()
	defer b.mu.Unlock()
	lines := reloads(t, b.record)
	if len(lines) > b.seen {
		b.seen = len(lines)
		if lines[len(lines)-1] == "exit: 0" {
			b.loaded = b.secrets(t)
		}
	}
	return b.loaded
}

func (b *freepbxBox) store(t *testing.T, port int) *FreePBX {
	return &FreePBX{DB: openAs(t, b.srv, port, b.name, b.user, b.pass), AMI: b.doer,
		Reload: Command{Argv: []string{b.script, "reload"}, Timeout: 30 * time.Second}}
}

func (b *freepbxBox) table(t *testing.T) []string {
	return rows(t, b.su, "SELECT id, keyword, data, flags FROM sip ORDER BY id, keyword")
}

// A rotation in FreePBX's database changes exactly the extension's secret
// row, runs the reload once, and is applied once Asterisk shows the new
// secret: PJSIPShowEndpoint for PJSIP, sip_additional.conf for chan_sip.
func TestFreePBXRotates(t *testing.T) {
	for _, tc := range []struct {
		ext     ami.Extension
		old     string
		checked string
	}{
		{pjsip300, "Leaky300", "checked: PJSIPShowEndpoint 300 shows it in auth 300-auth"},
		{sip200, "Leaky200", "checked: GetConfig of sip_additional.conf shows it in [200]"},
	} {
		t.Run(tc.ext.String(), func(t *testing.T) {
			t.Parallel()
			b := newFreePBX(t, 0, "Reload Complete")
			before := b.table(t)
			rec := &recorder{}
			res := secret.Rotator{Store: b.store(t, b.srv.Port)}.Rotate(t.Context(), tc.ext, rec, settings)
			if res.Result != action.Done || !strings.Contains(res.Detail, tc.checked) {
				t.Fatalf("result %+v", res)
			}
			line := rec.last(t)
			if line.Status != secret.Applied || len(rec.lines) != 2 {
				t.Errorf("recorded %d lines, the last %s", len(rec.lines), line.Status)
			}
			added, removed := changed(before, b.table(t))
			if len(added) != 1 || len(removed) != 1 || !strings.HasPrefix(removed[0], "id="+tc.ext.Name+"|keyword=secret|data="+tc.old+"|") ||
				added[0] != strings.Replace(removed[0], "data="+tc.old, "data="+line.Secret, 1) {
				t.Errorf("rows changed: %d added, %d removed; want the secret row of %s alone", len(added), len(removed), tc.ext.Name)
			}
			if got := reloads(t, b.record); !slices.Equal(got, []string{"args: reload", "exit: 0"}) {
				t.Errorf("reload record %q, want one run with argument reload, exit 0", got)
			}
			noSecret(t, res, tc.old, line.Secret)
		})
	}
}

// A reload that fails leaves Asterisk with the old secret: the old one
// goes back into the table, the rotation fails saying so, and the reload
// is not run again.
func TestFreePBXReloadFails(t *testing.T) {
	t.Parallel()
	b := newFreePBX(t, 1, "Unable to connect to Asterisk Manager")
	before := b.table(t)
	rec := &recorder{}
	res := secret.Rotator{Store: b.store(t, b.srv.Port)}.Rotate(t.Context(), pjsip300, rec, settings)
	if res.Result != action.Failed || res.Retryable || res.Err == nil ||
		!strings.Contains(res.Err.Error(), "reload` failed (exit status 1): Unable to connect to Asterisk Manager") {
		t.Fatalf("result %+v", res)
	}
	if want := "could not change the secret of 300 in table sip: the old secret is back in the sip table and still in use; by hand: find out why"; !strings.HasPrefix(res.Detail, want) {
		t.Errorf("detail %q\nwant %q...", res.Detail, want)
	}
	if after := b.table(t); !slices.Equal(before, after) {
		t.Error("the sip table changed")
	}
	if got := reloads(t, b.record); !slices.Equal(got, []string{"args: reload", "exit: 1"}) {
		t.Errorf("reload record %q, want one run, exit 1", got)
	}
	if rec.last(t).Status != secret.Failed || b.doer.Count("PJSIPShowEndpoint") != 0 {
		t.Errorf("recorded %s, %d checks", rec.last(t).Status, b.doer.Count("PJSIPShowEndpoint"))
	}
}

// A reload that hangs is killed at its timeout, with what it started, and
// counts as failed.
func TestFreePBXReloadTimesOut(t *testing.T) {
	t.Parallel()
	child := filepath.Join(t.TempDir(), "child")
	c := Command{Argv: []string{"/bin/sh", "-c", "sleep 60 & echo $! > " + child + "; echo started; wait"}, Timeout: 200 * time.Millisecond}
	err := c.Run(t.Context())
	if err == nil || !strings.Contains(err.Error(), "did not finish within 200ms and was killed: started") {
		t.Fatalf("err = %v", err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(readFile(t, child)))
	if err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, "the reload's child killed", 10*time.Second, func() bool {
		// Gone, or dead and not yet reaped by init.
		stat, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
		return syscall.Kill(pid, 0) == syscall.ESRCH || err == nil && strings.Contains(string(stat), ") Z ")
	})
}

// afterPlan is a store that does something (drop the connection, delete
// the row) between the plan and the change.
type afterPlan struct {
	secret.Store
	then func()
}

func (a afterPlan) Plan(ctx context.Context, ext ami.Extension) (secret.Plan, error) {
	p, err := a.Store.Plan(ctx, ext)
	a.then()
	return p, err
}

// The database going away between the plan and the change: failed, a
// retry may help, the row untouched, no reload.
func TestFreePBXDatabaseDropped(t *testing.T) {
	t.Parallel()
	b := newFreePBX(t, 0, "")
	proxy := b.srv.NewProxy(t)
	before := b.table(t)
	rec := &recorder{}
	res := secret.Rotator{Store: afterPlan{b.store(t, proxy.Port()), proxy.Cut}}.Rotate(t.Context(), pjsip300, rec, settings)
	if res.Result != action.Failed || !res.Retryable || !strings.Contains(res.Detail, "the change did not reach the table: the old secret is still in use") {
		t.Fatalf("result %+v", res)
	}
	if after := b.table(t); !slices.Equal(before, after) {
		t.Error("the sip table changed")
	}
	if got := reloads(t, b.record); got != nil {
		t.Errorf("the reload ran: %q", got)
	}
}

// An extension without a secret row fails at once (no retry helps),
// before a secret is made; a row deleted between the plan and the change
// fails the same way, and nothing else changes.
func TestFreePBXMissingRow(t *testing.T) {
	t.Parallel()
	b := newFreePBX(t, 0, "")
	before := b.table(t)
	rec := &recorder{}
	res := secret.Rotator{Store: b.store(t, b.srv.Port)}.Rotate(t.Context(), ami.Extension{Tech: ami.TechSIP, Name: "202"}, rec, settings)
	var f *secret.Failure
	if res.Result != action.Failed || res.Retryable || !errors.As(res.Err, &f) || res.Err.Error() != "FreePBX's sip table has no secret row for 202" || len(rec.lines) != 0 {
		t.Fatalf("result %+v, %d lines recorded", res, len(rec.lines))
	}
	if !strings.Contains(res.Detail, "nothing was changed: the old secret is still in use; by hand: ") {
		t.Errorf("detail %q", res.Detail)
	}

	del := func() {
		if _, err := b.su.Exec("DELETE FROM sip WHERE id = '301' AND keyword = 'secret'"); err != nil {
			t.Error(err)
		}
	}
	res = secret.Rotator{Store: afterPlan{b.store(t, b.srv.Port), del}}.Rotate(t.Context(), ami.Extension{Tech: ami.TechPJSIP, Name: "301"}, rec, settings)
	if res.Result != action.Failed || res.Retryable || res.Err == nil || res.Err.Error() != "the secret row of 301 is no longer in FreePBX's sip table" {
		t.Fatalf("result %+v", res)
	}
	added, removed := changed(before, b.table(t))
	if len(added) != 0 || len(removed) != 1 || !strings.HasPrefix(removed[0], "id=301|keyword=secret|") {
		t.Errorf("rows changed: %q added, %q removed; want only the row the test deleted gone", added, removed)
	}
	if got := reloads(t, b.record); got != nil {
		t.Errorf("the reload ran: %q", got)
	}
}

// A digest that wins over the secret is refused: nothing is changed.
func TestFreePBXRefusesDigest(t *testing.T) {
	t.Parallel()
	b := newFreePBX(t, 0, "")
	if _, err := b.su.Exec("UPDATE sip SET data = '0123456789abcdef0123456789abcdef' WHERE id = '301' AND keyword = 'md5_cred'"); err != nil {
		t.Fatal(err)
	}
	before := b.table(t)
	res := secret.Rotator{Store: b.store(t, b.srv.Port)}.Rotate(t.Context(), ami.Extension{Tech: ami.TechPJSIP, Name: "301"}, &recorder{}, settings)
	if res.Result != action.Skipped || res.Refusal == nil || res.Refusal.Reason != secret.Digest || !strings.Contains(res.Detail, "md5_cred") {
		t.Fatalf("result %+v", res)
	}
	if after := b.table(t); !slices.Equal(before, after) {
		t.Error("the sip table changed")
	}
}
