package guard

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"

	"github.com/astguard/astguard/internal/ami"
	"github.com/astguard/astguard/internal/ami/client"
)

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

// rotation is where a new secret goes.
type rotation struct {
	file, category, key, reload string
	catfilter                   string // for same-named sections (pjsip.conf)
}

// refusal is a rotation the guard will not do, with what to do instead.
type refusal struct{ why string }

func (r *refusal) Error() string { return r.why }

// planSIP finds the secret of chan_sip peer name in sip.conf's sections.
func planSIP(cats []confCategory, name string) (rotation, error) {
	var sec *confCategory
	for i := range cats {
		if cats[i].name == name {
			sec = &cats[i]
			break
		}
	}
	if sec == nil {
		return rotation{}, &refusal{fmt.Sprintf("sip.conf has no [%s] section: the peer may come from realtime (sippeers) or an #include the guard cannot edit; change its secret there by hand", name)}
	}
	if _, ok := sec.get("md5secret"); ok {
		return rotation{}, &refusal{fmt.Sprintf("[%s] in sip.conf uses md5secret, which wins over secret: set a new md5secret (md5 of user:realm:secret) by hand", name)}
	}
	if _, ok := sec.get("secret"); !ok {
		return rotation{}, &refusal{fmt.Sprintf("[%s] in sip.conf has no secret line of its own (a template shared by several peers?): add secret to [%s] by hand", name, name)}
	}
	return rotation{file: "sip.conf", category: name, key: "secret", reload: "chan_sip"}, nil
}

// planPJSIP finds the auth section endpoint name uses in pjsip.conf's
// sections and checks no other endpoint shares it.
func planPJSIP(cats []confCategory, name string) (rotation, error) {
	var ep *confCategory
	for i := range cats {
		if t, _ := cats[i].get("type"); cats[i].name == name && t == "endpoint" {
			ep = &cats[i]
			break
		}
	}
	if ep == nil {
		return rotation{}, &refusal{fmt.Sprintf("pjsip.conf has no endpoint [%s]: it may come from realtime (ps_endpoints) or a template; change its password there by hand", name)}
	}
	authName, ok := ep.get("auth")
	if !ok || authName == "" {
		return rotation{}, &refusal{fmt.Sprintf("endpoint [%s] has no auth= line of its own (set in a template?): rotate its auth section's password by hand", name)}
	}
	if strings.Contains(authName, ",") {
		return rotation{}, &refusal{fmt.Sprintf("endpoint [%s] lists several auth sections (%s): rotate them by hand", name, authName)}
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
		return rotation{}, &refusal{fmt.Sprintf("auth section [%s] is shared by endpoints %s: changing it would lock them all out; give [%s] an auth section of its own", authName, strings.Join(users, ", "), name)}
	}
	var auth *confCategory
	for i := range cats {
		if t, _ := cats[i].get("type"); cats[i].name == authName && t == "auth" {
			auth = &cats[i]
		}
	}
	if auth == nil {
		return rotation{}, &refusal{fmt.Sprintf("pjsip.conf has no auth section [%s] (realtime ps_auths?): change the password there by hand", authName)}
	}
	for _, k := range []string{"md5_cred", "password_digest"} {
		if _, ok := auth.get(k); ok {
			return rotation{}, &refusal{fmt.Sprintf("auth section [%s] uses %s, which wins over password: set a new one by hand", authName, k)}
		}
	}
	if _, ok := auth.get("password"); !ok {
		return rotation{}, &refusal{fmt.Sprintf("auth section [%s] has no password line of its own: set one by hand", authName)}
	}
	return rotation{file: "pjsip.conf", category: authName, key: "password", reload: "res_pjsip.so", catfilter: "type=auth"}, nil
}

// planRotation reads the config over AMI and decides where the secret goes.
func planRotation(ctx context.Context, s *client.Client, tech ami.Tech, name string) (rotation, error) {
	if !ami.ValidName(name) {
		return rotation{}, &refusal{fmt.Sprintf("%q is not a name the guard puts into a config action (1 to %d letters, digits or - _ . + * # @ ~): change its secret by hand", name, ami.MaxNameLen)}
	}
	var file string
	var hdrs []ami.Header
	switch tech {
	case ami.TechSIP:
		file = "sip.conf"
		hdrs = []ami.Header{{Key: "Filename", Value: file}, {Key: "Category", Value: name}}
	case ami.TechPJSIP:
		file = "pjsip.conf" // the whole file: shared auth sections must be seen
		hdrs = []ami.Header{{Key: "Filename", Value: file}}
	default:
		return rotation{}, &refusal{fmt.Sprintf("%s channels have no secret the guard can rotate", tech)}
	}
	resp, err := s.Do(ctx, ami.Action{Name: "GetConfig", Headers: hdrs})
	if err != nil {
		var ae *ami.ActionError
		if errors.As(err, &ae) && tech == ami.TechSIP {
			return rotation{}, &refusal{fmt.Sprintf("GetConfig of [%s] in sip.conf failed (%s): realtime peer? change its secret by hand", name, ae.Message)}
		}
		return rotation{}, err
	}
	cats := parseGetConfig(resp)
	if tech == ami.TechSIP {
		return planSIP(cats, name)
	}
	return planPJSIP(cats, name)
}

// updateAction is the UpdateConfig that puts secret into place.
func updateAction(r rotation, secret string) ami.Action {
	h := []ami.Header{
		{Key: "SrcFilename", Value: r.file},
		{Key: "DstFilename", Value: r.file},
		{Key: "Reload", Value: r.reload},
		{Key: "Action-000000", Value: "Update"},
		{Key: "Cat-000000", Value: r.category},
		{Key: "Var-000000", Value: r.key},
		{Key: "Value-000000", Value: secret},
	}
	if r.catfilter != "" {
		h = append(h, ami.Header{Key: "Options-000000", Value: `catfilter="` + r.catfilter + `"`})
	}
	return ami.Action{Name: "UpdateConfig", Headers: h}
}
