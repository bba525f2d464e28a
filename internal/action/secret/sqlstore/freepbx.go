package sqlstore

import (
	"bytes"
	"context"
	"crypto/subtle"
	"database/sql"
	"errors"
	"fmt"
	"os/exec"
	"strings"
	"syscall"
	"time"

	"github.com/astguard/astguard/internal/action/secret"
	"github.com/astguard/astguard/internal/ami"
)

// FreePBX is the store of a FreePBX box. FreePBX keeps every extension's
// secret in its database, table sip (columns id, keyword, data, flags;
// the row keyword='secret' of id=extension, for chan_sip and PJSIP alike),
// and writes sip_additional.conf and pjsip.auth.conf from it at every
// Apply Config (`fwconsole reload`), which then reloads Asterisk. So the
// secret changes in the table, then the reload runs; a reload that fails
// puts the old secret back in the table (Asterisk still uses it). The
// check reads the secret back through Asterisk: PJSIPShowEndpoint for
// PJSIP, GetConfig of sip_additional.conf for chan_sip (the row read
// back where that file is not there).
type FreePBX struct {
	DB  *DB
	AMI secret.AMI
	// Reload is FreePBX's reload, run after the change.
	Reload Reloader
}

var _ secret.Store = (*FreePBX)(nil)

// Reloader runs FreePBX's reload.
type Reloader interface {
	Run(ctx context.Context) error
	String() string
}

// sipAdditional is the file FreePBX writes chan_sip's peers to.
const sipAdditional = "sip_additional.conf"

// Plan reads the extension's secret rows. It refuses an unsafe name, a
// technology without secret and a digest that wins over the secret; an
// extension without a secret row is a permanent failure.
func (f *FreePBX) Plan(ctx context.Context, ext ami.Extension) (secret.Plan, error) {
	if err := checkExtension(ext); err != nil {
		return secret.Plan{}, err
	}
	rows, err := f.DB.db.QueryContext(ctx, f.DB.sql("SELECT keyword, data FROM sip WHERE id = ? AND keyword IN ('secret', 'md5secret', 'md5_cred')", nil), ext.Name)
	if err != nil {
		return secret.Plan{}, dbErr("reading FreePBX's sip table", err)
	}
	defer rows.Close()
	got := map[string]string{}
	for rows.Next() {
		var k, v string
		if err := rows.Scan(&k, &v); err != nil {
			return secret.Plan{}, dbErr("reading FreePBX's sip table", err)
		}
		got[k] = v
	}
	if err := rows.Err(); err != nil {
		return secret.Plan{}, dbErr("reading FreePBX's sip table", err)
	}
	for _, k := range []string{"md5_cred", "md5secret"} {
		if got[k] != "" {
			return secret.Plan{}, &secret.Refusal{Reason: secret.Digest, Why: fmt.Sprintf(
				"extension %s has %s in FreePBX's sip table, which wins over its secret: set a new secret in the FreePBX GUI (Applications > Extensions) and clear %s", ext.Name, k, k)}
		}
	}
	if _, ok := got["secret"]; !ok {
		return secret.Plan{}, missingRow(fmt.Sprintf("FreePBX's sip table has no secret row for %s", ext.Name),
			fmt.Sprintf("see whether %s is an extension of this FreePBX (Applications > Extensions) and set its secret there", ext))
	}
	return secret.Plan{Store: secret.StoreFreePBX, File: "sip", Section: ext.Name, Key: "secret", Reload: f.Reload.String()}, nil
}

// Apply changes the secret row, then runs the reload. When the reload
// fails, the old secret is put back (Asterisk still has it).
func (f *FreePBX) Apply(ctx context.Context, p secret.Plan, newSecret string) error {
	const get = "SELECT data FROM sip WHERE id = ? AND keyword = 'secret'"
	const set = "UPDATE sip SET data = ? WHERE id = ? AND keyword = 'secret'"
	var old string
	err := f.DB.db.QueryRowContext(ctx, f.DB.sql(get, nil), p.Section).Scan(&old)
	if errors.Is(err, sql.ErrNoRows) {
		return missingRow(fmt.Sprintf("the secret row of %s is no longer in FreePBX's sip table", p.Section),
			fmt.Sprintf("see what became of extension %s in the FreePBX GUI", p.Section))
	}
	if err != nil {
		return unchanged(dbErr("reading FreePBX's sip table", err), "once the database answers, set a new secret in the FreePBX GUI")
	}
	n, err := f.exec(ctx, set, newSecret, p.Section)
	if err != nil {
		return unchanged(dbErr("changing FreePBX's sip table", err), "once the database answers, see which secret extension "+p.Section+" has in the FreePBX GUI and set a new one")
	}
	if n == 0 {
		return missingRow(fmt.Sprintf("the secret row of %s is no longer in FreePBX's sip table", p.Section),
			fmt.Sprintf("see what became of extension %s in the FreePBX GUI", p.Section))
	}
	rerr := f.Reload.Run(ctx)
	if rerr == nil {
		return nil
	}
	// The table must not hold a secret Asterisk does not use: the next
	// Apply Config (by anyone, for anything) would switch to it unseen.
	// Put the old one back, even when the rotation's time is up.
	bctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	n, err = f.exec(bctx, "UPDATE sip SET data = ? WHERE id = ? AND keyword = 'secret' AND data = ?", old, p.Section, newSecret)
	todo := fmt.Sprintf("find out why `%s` fails (Apply Config in the GUI shows it), then set a new secret for %s in the FreePBX GUI", f.Reload, p.Section)
	switch {
	case err != nil:
		return &secret.Failure{Err: rerr, ByHand: todo,
			State: "the sip table holds the new secret but Asterisk still uses the old one, which could not be put back (" + err.Error() + "): the next Apply Config switches to the new one"}
	case n == 0:
		return &secret.Failure{Err: rerr, ByHand: todo,
			State: "the secret row changed again meanwhile (someone else edited it); Asterisk still uses the old secret"}
	}
	return &secret.Failure{Err: rerr, ByHand: todo, State: "the old secret is back in the sip table and still in use"}
}

// Verify reads the secret back through Asterisk: PJSIPShowEndpoint's
// AuthDetail for PJSIP (what res_pjsip loaded from the files the reload
// wrote), GetConfig of sip_additional.conf for chan_sip, and the row
// itself where FreePBX writes no such file.
func (f *FreePBX) Verify(ctx context.Context, ext ami.Extension, p secret.Plan, newSecret string) (string, error) {
	var how string
	var err error
	switch ext.Tech {
	case ami.TechPJSIP:
		how, err = secret.CheckPJSIP(ctx, f.AMI, ext.Name, "", newSecret)
	default:
		how, err = secret.CheckGetConfig(ctx, f.AMI, sipAdditional, ext.Name, "secret", newSecret)
		var ae *ami.ActionError
		if errors.As(err, &ae) && strings.HasPrefix(ae.Message, "Config file not found") {
			how, err = f.readBack(ctx, ext.Name, newSecret)
		}
	}
	if errors.Is(err, secret.ErrNotTaken) {
		show := "sip show peer " + ext.Name
		if ext.Tech == ami.TechPJSIP {
			show = "pjsip show endpoint " + ext.Name
		}
		return "", &secret.Failure{Err: err, Temporary: true,
			State:  fmt.Sprintf("the sip table holds the new secret, but Asterisk does not show it after `%s`: the old secret may still work", f.Reload),
			ByHand: fmt.Sprintf("run `%s`, then see which secret Asterisk has (asterisk -rx \"%s\")", f.Reload, show)}
	}
	return how, err
}

// readBack checks the secret row itself.
func (f *FreePBX) readBack(ctx context.Context, id, newSecret string) (string, error) {
	var got string
	err := f.DB.db.QueryRowContext(ctx, f.DB.sql("SELECT data FROM sip WHERE id = ? AND keyword = 'secret'", nil), id).Scan(&got)
	if errors.Is(err, sql.ErrNoRows) {
		return "", fmt.Errorf("%w: the secret row of %s is gone", secret.ErrNotTaken, id)
	}
	if err != nil {
		return "", dbErr("reading FreePBX's sip table", err)
	}
	if !same(got, newSecret) {
		return "", fmt.Errorf("%w: the secret row of %s holds another secret", secret.ErrNotTaken, id)
	}
	return "the sip table's secret row of " + id + " read back holds it (FreePBX wrote no " + sipAdditional + ")", nil
}

// exec runs a statement and returns the rows it matched.
func (f *FreePBX) exec(ctx context.Context, query string, args ...any) (int64, error) {
	res, err := f.DB.db.ExecContext(ctx, f.DB.sql(query, nil), args...)
	if err != nil {
		return 0, err
	}
	return res.RowsAffected()
}

// Command is a reload run as a command of its own, without a shell:
// FreePBX's `fwconsole reload`. It runs within Timeout, apart from the
// AMI actions' timeout; at the end of it the command and every process
// it started are killed.
type Command struct {
	Argv    []string
	Timeout time.Duration
}

func (c Command) String() string { return strings.Join(c.Argv, " ") }

// maxOutput is how much of the command's output an error quotes.
const maxOutput = 300

// Run runs the command. It fails when the command cannot start, exits
// with another status than 0, or outlives Timeout; the error quotes the
// end of its output.
func (c Command) Run(ctx context.Context) error {
	if len(c.Argv) == 0 {
		return errors.New("no reload command")
	}
	ctx, cancel := context.WithTimeout(ctx, c.Timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, c.Argv[0], c.Argv[1:]...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 2 * time.Second
	err := cmd.Run()
	if err == nil {
		return nil
	}
	tail := strings.TrimSpace(out.String())
	if len(tail) > maxOutput {
		tail = "..." + tail[len(tail)-maxOutput:]
	}
	if tail != "" {
		tail = ": " + strings.ReplaceAll(tail, "\n", " | ")
	}
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		return fmt.Errorf("`%s` did not finish within %s and was killed%s", c, c.Timeout, tail)
	}
	return fmt.Errorf("`%s` failed (%v)%s", c, err, tail)
}

// checkExtension refuses what the stores never put into a query or an
// action: a name the guard does not accept, a technology without secret.
func checkExtension(ext ami.Extension) error {
	if !ami.ValidName(ext.Name) {
		return &secret.Refusal{Reason: secret.UnsafeName, Why: fmt.Sprintf(
			"%q is not a name the guard puts into a database query (1 to %d letters, digits or - _ . + * # @ ~): change its secret by hand", ext.Name, ami.MaxNameLen)}
	}
	if ext.Tech != ami.TechSIP && ext.Tech != ami.TechPJSIP {
		return &secret.Refusal{Reason: secret.NoSecret, Why: fmt.Sprintf("%s channels have no secret the guard can rotate", ext.Tech)}
	}
	return nil
}

// missingRow is the failure of a row that is not there: nothing changed.
func missingRow(why, todo string) error {
	return &secret.Failure{Err: errors.New(why), State: "nothing was changed: the old secret is still in use", ByHand: todo}
}

// unchanged is the failure of a database that failed before the change
// was made, or while it was sent (an update that fails takes no effect
// unless the connection broke after the server committed it); a retry may
// help when err says so.
func unchanged(err error, todo string) error {
	var de *dbError
	temp := errors.As(err, &de) && de.temporary
	return &secret.Failure{Err: err, Temporary: temp, State: "the change did not reach the table: the old secret is still in use", ByHand: todo}
}

// same compares two secrets in constant time.
func same(a, b string) bool { return subtle.ConstantTimeCompare([]byte(a), []byte(b)) == 1 }
