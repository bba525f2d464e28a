package secret

import (
	"context"
	"errors"
	"sort"
	"strconv"
	"strings"

	"github.com/astguard/astguard/internal/ami"
)

// AMI sends AMI actions (*client.Client fits): Do returns an action's
// reply, List a list action's first reply and its items. An answer of
// Response: Error comes back as an *ami.ActionError.
type AMI interface {
	Do(ctx context.Context, a ami.Action) (ami.Response, error)
	List(ctx context.Context, a ami.Action) (ami.Response, []ami.Response, error)
}

// ConfigFiles is the Store of secrets in Asterisk's config files, read with
// GetConfig and changed with UpdateConfig and its Reload header: chan_sip's
// `secret` in the peer's section of sip.conf, PJSIP's `password` in the
// auth section the endpoint names with `auth=` in pjsip.conf. UpdateConfig
// rewrites the whole file (`k = v`, a generated-by header). The check
// reads the secret back: GetConfig of the peer's section for chan_sip,
// PJSIPShowEndpoint (the password Asterisk loaded) for PJSIP.
type ConfigFiles struct {
	AMI AMI
}

var _ Store = ConfigFiles{}

// Plan reads the extension's section (chan_sip) or the whole pjsip.conf
// (to see every endpoint sharing an auth section) and finds the secret.
func (c ConfigFiles) Plan(ctx context.Context, ext ami.Extension) (Plan, error) {
	name := ext.Name
	if !ami.ValidName(name) {
		return Plan{}, refuse(UnsafeName, "%q is not a name the guard puts into a config action (1 to %d letters, digits or - _ . + * # @ ~): change its secret by hand", name, ami.MaxNameLen)
	}
	var hdrs []ami.Header
	switch ext.Tech {
	case ami.TechSIP:
		hdrs = []ami.Header{{Key: "Filename", Value: "sip.conf"}, {Key: "Category", Value: name}}
	case ami.TechPJSIP:
		hdrs = []ami.Header{{Key: "Filename", Value: "pjsip.conf"}}
	default:
		return Plan{}, refuse(NoSecret, "%s channels have no secret the guard can rotate", ext.Tech)
	}
	resp, err := c.AMI.Do(ctx, ami.Action{Name: "GetConfig", Headers: hdrs})
	if err != nil {
		var ae *ami.ActionError
		if errors.As(err, &ae) && ext.Tech == ami.TechSIP {
			return Plan{}, refuse(NoSection, "GetConfig of [%s] in sip.conf failed (%s): realtime peer? change its secret by hand", name, ae.Message)
		}
		return Plan{}, err
	}
	cats := parseGetConfig(resp)
	if ext.Tech == ami.TechSIP {
		return planSIP(cats, name)
	}
	return planPJSIP(cats, name)
}

// Apply sends the UpdateConfig that puts secret into place, with the
// reload that makes Asterisk use it.
func (c ConfigFiles) Apply(ctx context.Context, p Plan, secret string) error {
	_, err := c.AMI.Do(ctx, updateAction(p, secret))
	return err
}

// Verify reads the secret back: chan_sip's from its section of sip.conf
// (GetConfig), PJSIP's from Asterisk itself (PJSIPShowEndpoint's
// AuthDetail: the password res_pjsip loaded at the reload).
func (c ConfigFiles) Verify(ctx context.Context, ext ami.Extension, p Plan, secret string) (string, error) {
	if ext.Tech == ami.TechPJSIP {
		return CheckPJSIP(ctx, c.AMI, ext.Name, p.Section, secret)
	}
	return CheckGetConfig(ctx, c.AMI, p.File, p.Section, p.Key, secret)
}

// confCategory is one section of a config file as GetConfig returns it.
type confCategory struct {
	name  string
	lines [][2]string // key, value in file order
}

func (c *confCategory) get(key string) (string, bool) {
	for _, l := range c.lines {
		if l[0] == key {
			return l[1], true
		}
	}
	return "", false
}

// parseGetConfig reads GetConfig's numbered headers (Category-000000,
// Line-000000-000001: key=value) into sections, in order.
func parseGetConfig(resp ami.Response) []confCategory {
	cats := map[int]*confCategory{}
	type line struct {
		n    int
		k, v string
	}
	lines := map[int][]line{}
	for _, h := range resp.Headers {
		k, v := h.Key, h.Value
		switch {
		case strings.HasPrefix(k, "Category-"):
			if i, err := strconv.Atoi(k[len("Category-"):]); err == nil {
				if cats[i] == nil {
					cats[i] = &confCategory{}
				}
				cats[i].name = v
			}
		case strings.HasPrefix(k, "Line-"):
			ci, li, ok := strings.Cut(k[len("Line-"):], "-")
			if !ok {
				continue
			}
			c, err1 := strconv.Atoi(ci)
			n, err2 := strconv.Atoi(li)
			if err1 != nil || err2 != nil {
				continue
			}
			key, val, _ := strings.Cut(v, "=")
			val = strings.TrimPrefix(val, ">") // exten => style
			lines[c] = append(lines[c], line{n, strings.TrimSpace(key), strings.TrimSpace(val)})
		}
	}
	idx := make([]int, 0, len(cats))
	for i := range cats {
		idx = append(idx, i)
	}
	sort.Ints(idx)
	out := make([]confCategory, 0, len(idx))
	for _, i := range idx {
		ls := lines[i]
		sort.Slice(ls, func(a, b int) bool { return ls[a].n < ls[b].n })
		c := cats[i]
		for _, l := range ls {
			c.lines = append(c.lines, [2]string{l.k, l.v})
		}
		out = append(out, *c)
	}
	return out
}

// planSIP finds the secret of chan_sip peer name in sip.conf's sections.
func planSIP(cats []confCategory, name string) (Plan, error) {
	var sec *confCategory
	for i := range cats {
		if cats[i].name == name {
			sec = &cats[i]
			break
		}
	}
	if sec == nil {
		return Plan{}, refuse(NoSection, "sip.conf has no [%s] section: the peer may come from realtime (sippeers) or an #include the guard cannot edit; change its secret there by hand", name)
	}
	if _, ok := sec.get("md5secret"); ok {
		return Plan{}, refuse(MD5Secret, "[%s] in sip.conf uses md5secret, which wins over secret: set a new md5secret (md5 of user:realm:secret) by hand", name)
	}
	if _, ok := sec.get("secret"); !ok {
		return Plan{}, refuse(Template, "[%s] in sip.conf has no secret line of its own (a template shared by several peers?): add secret to [%s] by hand", name, name)
	}
	return Plan{Store: StoreFiles, File: "sip.conf", Section: name, Key: "secret", Reload: "chan_sip"}, nil
}

// planPJSIP finds the auth section endpoint name uses in pjsip.conf's
// sections and checks no other endpoint shares it.
func planPJSIP(cats []confCategory, name string) (Plan, error) {
	var ep *confCategory
	for i := range cats {
		if t, _ := cats[i].get("type"); cats[i].name == name && t == "endpoint" {
			ep = &cats[i]
			break
		}
	}
	if ep == nil {
		return Plan{}, refuse(NoSection, "pjsip.conf has no endpoint [%s]: it may come from realtime (ps_endpoints) or a template; change its password there by hand", name)
	}
	authName, ok := ep.get("auth")
	if !ok || authName == "" {
		return Plan{}, refuse(Template, "endpoint [%s] has no auth= line of its own (set in a template?): rotate its auth section's password by hand", name)
	}
	if strings.Contains(authName, ",") {
		return Plan{}, refuse(SeveralAuths, "endpoint [%s] lists several auth sections (%s): rotate them by hand", name, authName)
	}
	var users []string
	for i := range cats {
		if t, _ := cats[i].get("type"); t == "endpoint" {
			if a, _ := cats[i].get("auth"); a == authName {
				users = append(users, cats[i].name)
			}
		}
	}
	if len(users) > 1 {
		return Plan{}, refuse(SharedAuth, "auth section [%s] is shared by endpoints %s: changing it would lock them all out; give [%s] an auth section of its own", authName, strings.Join(users, ", "), name)
	}
	var auth *confCategory
	for i := range cats {
		if t, _ := cats[i].get("type"); cats[i].name == authName && t == "auth" {
			auth = &cats[i]
		}
	}
	if auth == nil {
		return Plan{}, refuse(NoSection, "pjsip.conf has no auth section [%s] (realtime ps_auths?): change the password there by hand", authName)
	}
	for _, k := range []string{"md5_cred", "password_digest"} {
		if _, ok := auth.get(k); ok {
			return Plan{}, refuse(Digest, "auth section [%s] uses %s, which wins over password: set a new one by hand", authName, k)
		}
	}
	if _, ok := auth.get("password"); !ok {
		return Plan{}, refuse(Template, "auth section [%s] has no password line of its own: set one by hand", authName)
	}
	return Plan{Store: StoreFiles, File: "pjsip.conf", Section: authName, Key: "password", Reload: "res_pjsip.so", Filter: "type=auth"}, nil
}

// updateAction is the UpdateConfig that puts secret into place.
func updateAction(p Plan, secret string) ami.Action {
	h := []ami.Header{
		{Key: "SrcFilename", Value: p.File},
		{Key: "DstFilename", Value: p.File},
		{Key: "Reload", Value: p.Reload},
		{Key: "Action-000000", Value: "Update"},
		{Key: "Cat-000000", Value: p.Section},
		{Key: "Var-000000", Value: p.Key},
		{Key: "Value-000000", Value: secret},
	}
	if p.Filter != "" {
		h = append(h, ami.Header{Key: "Options-000000", Value: `catfilter="` + p.Filter + `"`})
	}
	return ami.Action{Name: "UpdateConfig", Headers: h}
}
