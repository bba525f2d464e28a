package sqlstore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"

	"github.com/astguard/astguard/internal/action/secret"
	"github.com/astguard/astguard/internal/ami"
)

// Realtime is the store of Asterisk realtime: PJSIP auths in a table
// (ps_auths: id, auth_type, password, md5_cred, username, ...) and
// chan_sip peers in another (sippeers: name, secret, md5secret, ...), in
// the database Asterisk reads through ODBC or its own drivers; the guard
// connects to it directly.
//
// PJSIP: the endpoint's auth is asked of Asterisk (PJSIPShowEndpoint; an
// auth other endpoints use too is refused, PJSIPShowEndpoints), its row
// changed (UPDATE ps_auths SET password WHERE id), the object
// expired from the sorcery memory cache that fronts the auths, if one
// does (SorceryMemoryCacheExpireObject), and the password read back
// through Asterisk (PJSIPShowEndpoint's AuthDetail). chan_sip: the peer's
// row changed (UPDATE sippeers SET secret WHERE name) and read back; with
// rtcachefriends=yes chan_sip keeps the peer it loaded, and only a CLI
// command the guard's AMI user may not send drops it: the outcome says
// which.
type Realtime struct {
	DB  *DB
	AMI secret.AMI
	// Auths and Peers are the table names (plain identifiers: see
	// config.RealtimeSecrets).
	Auths, Peers string
	// AuthCache is the sorcery memory cache in front of the auths; "":
	// none.
	AuthCache string
}

var _ secret.Store = (*Realtime)(nil)

// Plan finds the extension's row and refuses what must not be changed
// there.
func (r *Realtime) Plan(ctx context.Context, ext ami.Extension) (secret.Plan, error) {
	if err := checkExtension(ext); err != nil {
		return secret.Plan{}, err
	}
	if ext.Tech == ami.TechSIP {
		return r.planPeer(ctx, ext.Name)
	}
	return r.planAuth(ctx, ext.Name)
}

func (r *Realtime) planPeer(ctx context.Context, name string) (secret.Plan, error) {
	var sec, md5 sql.NullString
	err := r.DB.db.QueryRowContext(ctx, r.DB.sql("SELECT secret, md5secret FROM {t} WHERE name = ?", map[string]string{"t": r.Peers}), name).Scan(&sec, &md5)
	if errors.Is(err, sql.ErrNoRows) {
		return secret.Plan{}, missingRow(fmt.Sprintf("table %s has no peer %s", r.Peers, name),
			fmt.Sprintf("find where chan_sip's %s is defined (sip.conf? then secrets.store = \"auto\" or \"files\") and change its secret there", name))
	}
	if err != nil {
		return secret.Plan{}, dbErr("reading table "+r.Peers, err)
	}
	if md5.String != "" {
		return secret.Plan{}, &secret.Refusal{Reason: secret.MD5Secret, Why: fmt.Sprintf(
			"peer %s in table %s has md5secret, which wins over secret: set a new md5secret (md5 of user:realm:secret) by hand", name, r.Peers)}
	}
	return secret.Plan{Store: secret.StoreRealtime, File: r.Peers, Section: name, Key: "secret"}, nil
}

func (r *Realtime) planAuth(ctx context.Context, endpoint string) (secret.Plan, error) {
	auths, err := secret.EndpointAuths(ctx, r.AMI, endpoint)
	var ae *ami.ActionError
	if errors.As(err, &ae) && strings.HasPrefix(ae.Message, "Unable to retrieve endpoint") {
		return secret.Plan{}, missingRow(fmt.Sprintf("Asterisk has no PJSIP endpoint %s (%s)", endpoint, ae.Message),
			"find where endpoint "+endpoint+" is defined and change its password there")
	}
	if err != nil {
		return secret.Plan{}, err
	}
	switch {
	case len(auths) == 0:
		return secret.Plan{}, &secret.Refusal{Reason: secret.NoSecret, Why: fmt.Sprintf(
			"PJSIP endpoint %s has no auth: it is not challenged for a password (identified by address?), so no secret can be rotated; restrict or disable it by hand", endpoint)}
	case len(auths) > 1:
		return secret.Plan{}, &secret.Refusal{Reason: secret.SeveralAuths, Why: fmt.Sprintf(
			"endpoint %s uses several auths (%s): rotate them by hand", endpoint, strings.Join(auths, ", "))}
	}
	id := auths[0]
	if !ami.ValidName(id) {
		return secret.Plan{}, &secret.Refusal{Reason: secret.UnsafeName, Why: fmt.Sprintf(
			"the auth of endpoint %s, %q, is not a name the guard puts into a query or an action: change its password by hand", endpoint, id)}
	}
	users, err := secret.AuthUsers(ctx, r.AMI, id)
	if err != nil {
		return secret.Plan{}, err
	}
	if len(users) > 1 {
		return secret.Plan{}, &secret.Refusal{Reason: secret.SharedAuth, Why: fmt.Sprintf(
			"auth %s is shared by endpoints %s: changing it would lock them all out; give endpoint %s an auth of its own", id, strings.Join(users, ", "), endpoint)}
	}
	var authType, md5 sql.NullString
	err = r.DB.db.QueryRowContext(ctx, r.DB.sql("SELECT auth_type, md5_cred FROM {t} WHERE id = ?", map[string]string{"t": r.Auths}), id).Scan(&authType, &md5)
	if errors.Is(err, sql.ErrNoRows) {
		return secret.Plan{}, missingRow(fmt.Sprintf("table %s has no auth %s (the auth of endpoint %s)", r.Auths, id, endpoint),
			fmt.Sprintf("find where auth %s is defined (pjsip.conf? then secrets.store = \"auto\" or \"files\") and change its password there", id))
	}
	if err != nil {
		return secret.Plan{}, dbErr("reading table "+r.Auths, err)
	}
	if md5.String != "" || strings.EqualFold(authType.String, "md5") {
		return secret.Plan{}, &secret.Refusal{Reason: secret.Digest, Why: fmt.Sprintf(
			"auth %s in table %s uses md5_cred, which wins over password: set a new md5_cred by hand", id, r.Auths)}
	}
	p := secret.Plan{Store: secret.StoreRealtime, File: r.Auths, Section: id, Key: "password"}
	if r.AuthCache != "" {
		p.Reload = "SorceryMemoryCacheExpireObject of cache " + r.AuthCache
	}
	return p, nil
}

// Apply changes the row; for a PJSIP auth, it then expires the auth from
// the memory cache, so that Asterisk reads the row again.
func (r *Realtime) Apply(ctx context.Context, p secret.Plan, newSecret string) error {
	query := "UPDATE {t} SET password = ? WHERE id = ?"
	if p.File == r.Peers && p.Key == "secret" {
		query = "UPDATE {t} SET secret = ? WHERE name = ?"
	}
	res, err := r.DB.db.ExecContext(ctx, r.DB.sql(query, map[string]string{"t": p.File}), newSecret, p.Section)
	if err != nil {
		return unchanged(dbErr("changing table "+p.File, err), "once the database answers, change the "+p.String()+" by hand")
	}
	if n, err := res.RowsAffected(); err != nil || n == 0 {
		return missingRow(fmt.Sprintf("the row of %s is no longer in table %s", p.Section, p.File),
			"see what became of "+p.Section+" and change its secret where it lives now")
	}
	if p.Key != "password" || r.AuthCache == "" {
		return nil
	}
	if err := secret.ExpireCached(ctx, r.AMI, r.AuthCache, p.Section); err != nil {
		todo := fmt.Sprintf("run asterisk -rx \"sorcery memory cache expire %s %s\" (or check secrets.realtime.auth_cache against sorcery.conf)", r.AuthCache, p.Section)
		var ae *ami.ActionError
		if errors.As(err, &ae) && strings.Contains(ae.Message, "full backend caching") {
			// Such a cache is reloaded whole.
			todo = fmt.Sprintf("run asterisk -rx \"sorcery memory cache populate %s\"", r.AuthCache)
		}
		return &secret.Failure{Err: err, ByHand: todo,
			State: fmt.Sprintf("table %s holds the new password, but Asterisk's memory cache %s may keep the old one until the object expires", p.File, r.AuthCache)}
	}
	return nil
}

// Verify reads the password back through Asterisk (PJSIP), or the row
// back (chan_sip, which shows no secret over AMI), and says what
// rtcachefriends leaves to do.
func (r *Realtime) Verify(ctx context.Context, ext ami.Extension, p secret.Plan, newSecret string) (string, error) {
	if p.Key == "password" {
		how, err := secret.CheckPJSIP(ctx, r.AMI, ext.Name, p.Section, newSecret)
		if errors.Is(err, secret.ErrNotTaken) {
			state := fmt.Sprintf("table %s holds the new password, but Asterisk still has another for auth %s", p.File, p.Section)
			if r.AuthCache == "" {
				state += " (a sorcery memory cache in front of the auths? name it in secrets.realtime.auth_cache)"
			}
			return "", &secret.Failure{Err: err, Temporary: true, State: state + ": the old secret may still work",
				ByHand: fmt.Sprintf("see `asterisk -rx \"pjsip show auth %s\"`; expire the auth from its cache, or restart Asterisk", p.Section)}
		}
		return how, err
	}
	var got sql.NullString
	err := r.DB.db.QueryRowContext(ctx, r.DB.sql("SELECT secret FROM {t} WHERE name = ?", map[string]string{"t": p.File}), p.Section).Scan(&got)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		return "", &secret.Failure{Err: fmt.Errorf("%w: the row of %s left table %s", secret.ErrNotTaken, p.Section, p.File),
			State: "the peer's row is gone: chan_sip may still know it with the old secret", ByHand: "see what became of peer " + p.Section}
	case err != nil:
		return "", dbErr("reading table "+p.File, err)
	case !same(got.String, newSecret):
		return "", &secret.Failure{Err: fmt.Errorf("%w: the row of %s in table %s holds another secret", secret.ErrNotTaken, p.Section, p.File),
			Temporary: true, State: "someone changed the row again: which secret is in use is unknown", ByHand: "see the row of " + p.Section + " in table " + p.File}
	}
	how := fmt.Sprintf("the row of %s in table %s read back holds it", p.Section, p.File)
	// GetConfig of sip.conf's [general] needs only the config class the
	// guard's AMI user has.
	if v, ok, err := secret.GetConfigValue(ctx, r.AMI, "sip.conf", "general", "rtcachefriends"); err == nil && ok && isTrue(v) {
		how += fmt.Sprintf("; but chan_sip keeps realtime peers it loaded (rtcachefriends=yes in sip.conf) and accepts the old secret until you run: asterisk -rx \"sip prune realtime peer %s\" (the guard's AMI user has no command right)", p.Section)
	}
	return how, nil
}

// isTrue is Asterisk's ast_true.
func isTrue(v string) bool {
	switch strings.ToLower(strings.TrimSpace(v)) {
	case "yes", "true", "y", "t", "1", "on":
		return true
	}
	return false
}
