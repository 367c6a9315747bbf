//! A check run on a model's chat template before it is used: no value that may hold a
//! namespace is ever stored into a namespace.
//!
//! Why: `{% set ns.x = ns %}` makes a namespace that holds itself, and minijinja formats such a
//! value (`ns ~ ''`, `ns + …`, an error message) by recursing until the thread's stack
//! overflows, which aborts the whole process; nothing in minijinja's API can intercept the
//! assignment or the formatting (its `Namespace` is crate-private). A namespace is the only
//! mutable value a template has, and `{% set a.b = … %}` the only mutation, so a cycle needs an
//! assignment whose right-hand side holds a namespace (construction alone cannot close one: a
//! namespace can only be built from values that exist before it). This module refuses any
//! template in which such an assignment is possible, by a conservative analysis of its syntax
//! tree (minijinja's `unstable_machinery` parser, hence the pinned version in Cargo.toml).
//!
//! "May hold a namespace" is computed to a fixed point over every binding in the template
//! (flow-insensitive, so conservative), in two parts (`Holds`): a value may *be* a namespace, or
//! hold one *inside* (a list or map). A `namespace(…)` call is one; a variable is or holds one
//! when any binding of it (set, for, with, import, a macro parameter) may; lists and maps hold
//! what their items are or hold; `and`, `or` and conditionals pass both through; `+`, `*`,
//! slices, most filters and unknown calls pass them on; strings, numbers, comparisons, tests,
//! `~` and macro calls do not. Reading an attribute or item gives only what the value holds
//! *inside*: a namespace's own attributes never hold a namespace, because this check refuses
//! every store and construction that could put one there (so `state.count` is fine when
//! `state` is a namespace handed to a macro, as in Kimi K3's template). A macro's parameters
//! take what the calls of it by name pass in each position or keyword; a call of anything else
//! (a macro under another name) taints every parameter. Published templates (the 70 of
//! tests/real_templates.rs) store strings, numbers, booleans and lists of those, and pass.

use super::template_ast::{
    call_arg_exprs, child_stmts, parse_template, stmt_exprs, target_names, walk_expr,
};
use minijinja::machinery::ast;
use std::collections::{HashMap, HashSet};

/// Filters whose result is never a namespace container (strings, numbers, booleans).
const SCALAR_FILTERS: &[&str] = &[
    "length",
    "count",
    "string",
    "int",
    "float",
    "bool",
    "tojson",
    "join",
    "lower",
    "upper",
    "trim",
    "title",
    "capitalize",
    "replace",
    "indent",
    "safe",
    "escape",
    "e",
    "abs",
    "round",
    "wordcount",
    "pprint",
    "urlencode",
    "format",
    "center",
    "truncate",
    "striptags",
];

/// Ok, or the reason the template is refused (with its line).
pub fn check(source: &str) -> Result<(), String> {
    // A template that does not parse is reported by the compiler with its own message.
    let Some(root) = parse_template(source) else {
        return Ok(());
    };
    let mut scan = Scan::default();
    scan.collect(&root);
    // Each round can only add names; there are finitely many.
    loop {
        scan.changed = false;
        scan.bind(&root);
        if !scan.changed {
            break;
        }
    }
    scan.verify(&root);
    match scan.violation {
        Some(v) => Err(v),
        None => Ok(()),
    }
}

/// What a value may hold: be a namespace itself, or hold one inside (a list or map with a
/// namespace somewhere in it). The two differ when an attribute or item is read: a namespace's
/// attributes never hold a namespace (this check refuses every store and construction that
/// could put one there), so `state.count` is safe even when `state` may be a namespace, but
/// `d.k` is not when `d` may be a map holding one.
#[derive(Clone, Copy, Default, PartialEq, Eq)]
struct Holds {
    namespace: bool,
    inside: bool,
}

impl Holds {
    const NONE: Holds = Holds {
        namespace: false,
        inside: false,
    };
    const ANY: Holds = Holds {
        namespace: true,
        inside: true,
    };

    fn any(self) -> bool {
        self.namespace || self.inside
    }

    fn or(self, o: Holds) -> Holds {
        Holds {
            namespace: self.namespace || o.namespace,
            inside: self.inside || o.inside,
        }
    }

    /// A value whose items are the given value's contents (a loop target, `loop.previtem`).
    fn items_of(self) -> Holds {
        if self.inside {
            Holds::ANY
        } else {
            Holds::NONE
        }
    }
}

#[derive(Default)]
struct Scan<'a> {
    /// Names some binding of which may be a namespace.
    is_namespace: HashSet<&'a str>,
    /// Names some binding of which may hold a namespace inside.
    holds_inside: HashSet<&'a str>,
    /// Names with at least one binding, and whether every binding is a `namespace(…)` call.
    only_namespaces: HashMap<&'a str, bool>,
    /// Each macro's parameter names, in order.
    macros: HashMap<&'a str, Vec<&'a str>>,
    /// The parameters of every `{% call(…) %}` block, which `caller(…)` binds.
    caller_params: Vec<&'a str>,
    /// What some call of an unknown callee (a macro passed around as a value, perhaps) passes
    /// as an argument: every macro parameter may hold the same.
    calls_pass: Holds,
    changed: bool,
    violation: Option<String>,
}

fn is_namespace_call(e: &ast::Expr) -> bool {
    matches!(e, ast::Expr::Call(c) if matches!(&c.expr, ast::Expr::Var(v) if v.id == "namespace"))
}

impl<'a> Scan<'a> {
    fn taint(&mut self, names: &[&'a str], h: Holds) {
        for &n in names {
            if h.namespace && self.is_namespace.insert(n) {
                self.changed = true;
            }
            if h.inside && self.holds_inside.insert(n) {
                self.changed = true;
            }
        }
    }

    fn bound(&mut self, target: &ast::Expr<'a>, by_namespace_call: bool) {
        let mut names = Vec::new();
        target_names(target, &mut names);
        for n in names {
            let e = self.only_namespaces.entry(n).or_insert(true);
            *e &= by_namespace_call;
        }
    }

    /// Pass 1: macro names and which names are bound only to `namespace(…)` calls.
    fn collect(&mut self, s: &ast::Stmt<'a>) {
        use ast::Stmt as S;
        match s {
            S::Set(x) => self.bound(&x.target, is_namespace_call(&x.expr)),
            S::SetBlock(x) => self.bound(&x.target, false),
            S::ForLoop(x) => {
                self.bound(&x.target, false);
                self.only_namespaces.insert("loop", false);
            }
            S::WithBlock(x) => {
                for (t, _) in &x.assignments {
                    self.bound(t, false);
                }
            }
            S::Macro(m) => {
                let mut names = Vec::new();
                m.args.iter().for_each(|a| target_names(a, &mut names));
                if self.macros.insert(m.name, names).is_some() {
                    // Two macros of one name: a call by that name is not known to be either.
                    self.only_namespaces.insert(m.name, false);
                }
                m.args.iter().for_each(|a| self.bound(a, false));
            }
            S::CallBlock(c) => {
                c.macro_decl.args.iter().for_each(|a| {
                    target_names(a, &mut self.caller_params);
                    self.bound(a, false)
                });
            }
            S::Import(i) => self.bound(&i.name, false),
            S::FromImport(f) => {
                for (name, alias) in &f.names {
                    self.bound(alias.as_ref().unwrap_or(name), false);
                }
            }
            _ => {}
        }
        self.children(s, |me, c| me.collect(c));
    }

    /// One round of pass 2: taint the names bound to values that may hold a namespace.
    fn bind(&mut self, s: &ast::Stmt<'a>) {
        use ast::Stmt as S;
        let mut bindings: Vec<(&ast::Expr<'a>, Holds)> = Vec::new();
        let mut params = Vec::new();
        match s {
            S::Set(x) => bindings.push((&x.target, self.holds(&x.expr))),
            S::ForLoop(x) => {
                let items = self.holds(&x.iter).items_of();
                bindings.push((&x.target, items));
                // `loop.previtem` and `loop.nextitem` are items too.
                self.taint(
                    &["loop"],
                    Holds {
                        namespace: false,
                        inside: items.any(),
                    },
                );
            }
            S::WithBlock(x) => {
                for (t, e) in &x.assignments {
                    bindings.push((t, self.holds(e)));
                }
            }
            S::Macro(m) => params.push((&m.args, &m.defaults)),
            S::CallBlock(c) => params.push((&c.macro_decl.args, &c.macro_decl.defaults)),
            // A module exports its top-level variables, namespaces included.
            S::Import(i) => bindings.push((&i.name, Holds::ANY)),
            S::FromImport(f) => {
                for (name, alias) in &f.names {
                    bindings.push((alias.as_ref().unwrap_or(name), Holds::ANY));
                }
            }
            _ => {}
        }
        for (args, defaults) in params {
            let h = defaults
                .iter()
                .fold(self.calls_pass, |h, d| h.or(self.holds(d)));
            let mut names = Vec::new();
            args.iter().for_each(|a| target_names(a, &mut names));
            self.taint(&names, h);
            // Extra arguments arrive in a list and a map; `caller` is a macro.
            let extra = Holds {
                namespace: false,
                inside: h.any(),
            };
            self.taint(&["varargs", "kwargs", "caller"], extra);
        }
        for (t, h) in bindings {
            let mut names = Vec::new();
            target_names(t, &mut names);
            // `set a, b = …` unpacks: its parts are the value's items.
            let h = if matches!(t, ast::Expr::Var(_)) {
                h
            } else {
                h.items_of()
            };
            self.taint(&names, h);
        }
        self.visit_exprs(s, &mut |me, e| me.note_calls(e));
        self.children(s, |me, c| me.bind(c));
    }

    /// Taints the parameters that the calls anywhere in `e` bind.
    fn note_calls(&mut self, e: &ast::Expr<'a>) {
        let mut calls = Vec::new();
        walk_expr(e, &mut |x| {
            if let ast::Expr::Call(c) = x {
                if !is_namespace_call(x) {
                    calls.push(c);
                }
            }
        });
        for c in calls {
            self.note_call(&c.expr, &c.args);
        }
    }

    /// A call of a macro by its name taints the parameters its arguments bind (by position
    /// or keyword; the rest go to `varargs` and `kwargs`); `caller(…)` taints every call
    /// block's parameters; any other callee may be a macro under another name, so what it is
    /// given taints every parameter of every macro.
    fn note_call(&mut self, callee: &ast::Expr<'a>, args: &[ast::CallArg<'a>]) {
        // A name that is also bound as a variable (`set`, a parameter, an import, a second
        // macro) may hold another macro when it is called.
        let name = match callee {
            ast::Expr::Var(v) if !self.only_namespaces.contains_key(v.id) => Some(v.id),
            _ => None,
        };
        let params = match name {
            Some("caller") => Some(None),
            Some(n) => self.macros.get(n).cloned().map(Some),
            None => None,
        };
        let Some(params) = params else {
            let passed = call_arg_exprs(args).fold(Holds::NONE, |h, a| h.or(self.holds(a)));
            self.note_passed(passed);
            return;
        };
        let mut pos = 0;
        for a in args {
            let (targets, h): (Vec<&'a str>, Holds) = match (a, &params) {
                (ast::CallArg::Pos(e), Some(ps)) => {
                    pos += 1;
                    (
                        vec![ps.get(pos - 1).copied().unwrap_or("varargs")],
                        self.holds(e),
                    )
                }
                (ast::CallArg::Kwarg(k, e), Some(ps)) => {
                    let t = ps.iter().copied().find(|p| p == k).unwrap_or("kwargs");
                    (vec![t], self.holds(e))
                }
                (ast::CallArg::PosSplat(e) | ast::CallArg::KwargSplat(e), Some(ps)) => {
                    (ps.clone(), self.holds(e).items_of())
                }
                (_, None) => {
                    let e = call_arg_exprs(std::slice::from_ref(a)).next().expect("one");
                    (
                        self.caller_params.clone(),
                        self.holds(e).items_of().or(self.holds(e)),
                    )
                }
            };
            // `varargs` and `kwargs` hold their values inside a list or map.
            let h = if matches!(targets[..], ["varargs"] | ["kwargs"]) {
                Holds {
                    namespace: false,
                    inside: h.any(),
                }
            } else {
                h
            };
            self.taint(&targets, h);
        }
    }

    fn note_passed(&mut self, passed: Holds) {
        let now = self.calls_pass.or(passed);
        if now != self.calls_pass {
            self.calls_pass = now;
            self.changed = true;
        }
    }

    /// Pass 3: every store into a namespace, and every namespace construction, is free of
    /// namespaces.
    fn verify(&mut self, s: &ast::Stmt<'a>) {
        if self.violation.is_some() {
            return;
        }
        if let ast::Stmt::Set(x) = s {
            if matches!(x.target, ast::Expr::GetAttr(_) | ast::Expr::GetItem(_))
                && self.may_hold(&x.expr)
            {
                self.violation = Some(format!(
                    "line {}: `{{% set … = … %}}` may store a namespace into a namespace, and a \
                     namespace that holds itself crashes the template engine; edge-sft refuses \
                     such templates",
                    x.span().start_line
                ));
                return;
            }
        }
        let mut bad_ctor = None;
        self.visit_exprs(s, &mut |me, e| {
            walk_expr(e, &mut |x| {
                if let ast::Expr::Call(c) = x {
                    if is_namespace_call(x) && call_arg_exprs(&c.args).any(|a| me.may_hold(a)) {
                        bad_ctor.get_or_insert(c.span().start_line);
                    }
                }
            })
        });
        if let Some(line) = bad_ctor {
            self.violation = Some(format!(
                "line {line}: `namespace(…)` is built from a value that may hold a namespace; \
                 edge-sft refuses such templates (a namespace inside a namespace can be made \
                 to hold itself, which crashes the template engine)"
            ));
            return;
        }
        self.children(s, |me, c| me.verify(c));
    }

    fn may_hold(&self, e: &ast::Expr<'a>) -> bool {
        self.holds(e).any()
    }

    fn holds(&self, e: &ast::Expr<'a>) -> Holds {
        use ast::Expr as E;
        let within = |h: Holds| Holds {
            namespace: false,
            inside: h.any(),
        };
        match e {
            E::Var(v) => Holds {
                namespace: self.is_namespace.contains(v.id),
                inside: self.holds_inside.contains(v.id),
            },
            E::Const(_) | E::UnaryOp(_) | E::Compare(_) | E::Test(_) => Holds::NONE,
            E::BinOp(b) => match b.op {
                ast::BinOpKind::ScAnd | ast::BinOpKind::ScOr => {
                    self.holds(&b.left).or(self.holds(&b.right))
                }
                // Lists joined or repeated hold what their parts hold.
                ast::BinOpKind::Add | ast::BinOpKind::Mul => {
                    within(self.holds(&b.left).or(self.holds(&b.right)))
                }
                _ => Holds::NONE,
            },
            E::IfExpr(i) => {
                let f = i.false_expr.as_ref().map_or(Holds::NONE, |f| self.holds(f));
                self.holds(&i.true_expr).or(f)
            }
            E::Filter(f) => {
                let input = f.expr.as_ref().map_or(Holds::NONE, |x| self.holds(x));
                let args = call_arg_exprs(&f.args).fold(input, |h, a| h.or(self.holds(a)));
                // A filter may take an item out (`first`) or wrap its input (`list`).
                if SCALAR_FILTERS.contains(&f.name) || !args.any() {
                    Holds::NONE
                } else {
                    Holds::ANY
                }
            }
            E::GetAttr(g) => self.read_from(&g.expr),
            E::GetItem(g) => self.read_from(&g.expr),
            E::Slice(s) => within(self.holds(&s.expr)),
            E::Call(c) => {
                if is_namespace_call(e) {
                    return Holds {
                        namespace: true,
                        inside: false,
                    };
                }
                // Macros return strings; a name also bound as a variable (a parameter named
                // like a macro, given `dict`) may be any callable.
                let is_macro = matches!(&c.expr, E::Var(v)
                    if (self.macros.contains_key(v.id) && !self.only_namespaces.contains_key(v.id))
                        || v.id == "caller");
                let inputs =
                    call_arg_exprs(&c.args).fold(self.holds(&c.expr), |h, a| h.or(self.holds(a)));
                if is_macro || !inputs.any() {
                    Holds::NONE
                } else {
                    Holds::ANY
                }
            }
            E::List(l) => within(l.items.iter().fold(Holds::NONE, |h, i| h.or(self.holds(i)))),
            E::Map(m) => within(
                m.keys
                    .iter()
                    .chain(&m.values)
                    .fold(Holds::NONE, |h, v| h.or(self.holds(v))),
            ),
        }
    }

    /// What an attribute or item read from `e` may hold: a namespace's attributes hold none
    /// (by this check), so only what `e` may hold inside can come out.
    fn read_from(&self, e: &ast::Expr<'a>) -> Holds {
        if let ast::Expr::Var(v) = e {
            if self.only_namespaces.get(v.id) == Some(&true) {
                return Holds::NONE;
            }
        }
        self.holds(e).items_of()
    }

    /// Calls `f` on each top-level expression of statement `s` (not those of its children).
    fn visit_exprs(&mut self, s: &ast::Stmt<'a>, f: &mut dyn FnMut(&mut Self, &ast::Expr<'a>)) {
        use ast::Stmt as S;
        for e in stmt_exprs(s) {
            f(self, e);
        }
        // A call block's and a `do` statement's own call (not an expression node, so not seen
        // by `note_calls`) can pass namespaces to a macro.
        let own_call = match s {
            S::CallBlock(c) => Some(&*c.call),
            S::Do(d) => Some(&*d.call),
            _ => None,
        };
        if let Some(call) = own_call {
            self.note_call(&call.expr, &call.args);
        }
    }

    /// Calls `f` on each child statement of `s`.
    fn children(&mut self, s: &ast::Stmt<'a>, mut f: impl FnMut(&mut Self, &ast::Stmt<'a>)) {
        for c in child_stmts(s) {
            f(self, c);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::check;

    #[test]
    fn refuses_every_way_a_namespace_could_reach_a_namespace() {
        let ns = "{% set ns = namespace(a=1) %}";
        for body in [
            "{% set ns.a = ns %}",
            "{% set x = ns %}{% set ns.a = x %}",
            "{% set ns.a = [ns] %}",
            "{% set ns.a = {'k': ns} %}",
            "{% set ns.a = ns if true else 1 %}",
            "{% set ns.a = [ns] | first %}",
            "{% set ns.a = ([ns] * 2)[0] %}",
            "{% set ns.a = none or ns %}",
            "{% set m = namespace() %}{% set ns.a = m %}",
            "{% for n in [ns] %}{% set ns.a = n %}{% endfor %}",
            "{% for n in [ns] %}{% set ns.a = loop.previtem %}{% endfor %}",
            "{% with w = ns %}{% set ns.a = w %}{% endwith %}",
            "{% macro f(p) %}{% set ns.a = p %}{% endmacro %}{{ f(ns) }}",
            "{% macro f(p=ns) %}{% set ns.a = p %}{% endmacro %}{{ f() }}",
            "{% macro f(p) %}{% set ns.a = p %}{% endmacro %}{% call f(ns) %}{% endcall %}",
            "{% set b = namespace(r=ns) %}",
            "{% set b = namespace(r=[ns]) %}{% set ns.a = b.r %}",
            "{% set d = dict(k=ns) %}{% set ns.a = d.k %}",
            // Macro arguments, bound by position, keyword, splat, `varargs`, `caller`, or
            // through a macro called under another name.
            "{% macro f(a, b) %}{% set b.x = a %}{% endmacro %}{{ f(ns, ns) }}",
            "{% macro f(p) %}{% set ns.a = p.k %}{% endmacro %}{{ f({'k': ns}) }}",
            "{% macro f(p) %}{% set ns.a = p %}{% endmacro %}{{ f(p=ns) }}",
            "{% macro f(p) %}{% set ns.a = p %}{% endmacro %}{{ f(*[ns]) }}",
            "{% macro f() %}{% set ns.a = varargs[0] %}{% endmacro %}{{ f(ns) }}",
            "{% macro f() %}{% set ns.a = kwargs.q %}{% endmacro %}{{ f(q=ns) }}",
            "{% macro f(p) %}{% set ns.a = p %}{% endmacro %}{% set g = f %}{{ g(ns) }}",
            "{% macro f() %}{{ caller(ns) }}{% endmacro %}{% call(x) f() %}{% set ns.a = x %}{% endcall %}",
            // A parameter named like a macro holds another macro; two macros of one name.
            "{% macro f(p) %}{% endmacro %}{% macro g(q) %}{% set ns.a = q %}{% endmacro %}{% macro h(f) %}{{ f(ns) }}{% endmacro %}{{ h(g) }}",
            "{% macro f(q) %}{% set ns.a = q %}{% endmacro %}{% macro f(p) %}{% endmacro %}{{ f(ns) }}",
            "{% macro f() %}{% endmacro %}{% macro h(f) %}{% set ns.a = f(x=ns) %}{% endmacro %}{{ h(dict) }}",
        ] {
            let t = format!("{ns}{body}");
            assert!(check(&t).is_err(), "not refused: {t}");
        }
    }

    #[test]
    fn passes_the_stores_real_templates_make() {
        for t in [
            "{% set ns = namespace(count=0, s='', flag=true) %}{% set ns.count = ns.count + 1 %}",
            "{% set ns = namespace(s='') %}{% for m in messages %}{% set ns.s = m['content'] %}{% endfor %}",
            "{% set ns = namespace(i=0) %}{% for m in messages[::-1] %}{% set ns.i = messages|length - loop.index0 - 1 %}{% endfor %}",
            "{% set ns = namespace(a=1, b=2) %}{% set ns.a = ns.b %}",
            "{% set ns = namespace(x=[]) %}{% set ns.x = ns.x + [messages[0]['role']] %}",
            "{% set ns = namespace(t='') %}{% set ns.t = ns ~ 'x' if false else 'y' %}",
            "{% macro f(p) %}{{ p }}{% endmacro %}{% set ns = namespace(v='') %}{% set ns.v = f('a') %}",
            "{{ messages | tojson }}",
            // A namespace passed to macros, which update its counters (Kimi K3's template).
            "{% macro f(state) %}{% set state.i = state.i + 1 %}{% endmacro %}{% macro g(t, state) %}{{ f(state) }}{{ [t, state] | length }}{% endmacro %}{% set state = namespace(i=0) %}{{ g('a', state) }}",
            // The shapes of published templates (DeepSeek Coder, Gemma 4, Qwen3).
            "{%- set ns = namespace(found=false) -%}{%- for message in messages -%}{%- if message['role'] == 'system' -%}{%- set ns.found = true -%}{%- endif -%}{%- endfor -%}",
            "{%- macro strip(text) -%}{%- set ns = namespace(result='') -%}{%- for part in text.split('<c|>') -%}{%- if '<|c>' in part -%}{%- set ns.result = ns.result + part.split('<|c>')[0] -%}{%- else -%}{%- set ns.result = ns.result + part -%}{%- endif -%}{%- endfor -%}{{- ns.result | trim -}}{%- endmacro -%}{{ strip(messages[0]['content']) }}",
            "{%- set ns = namespace(multi_step_tool=true, last_query_index=messages|length - 1) %}{%- for message in messages[::-1] %}{%- set index = (messages|length - 1) - loop.index0 %}{%- if ns.multi_step_tool and message.role == 'user' %}{%- set ns.multi_step_tool = false %}{%- set ns.last_query_index = index %}{%- endif %}{%- endfor %}",
        ] {
            assert_eq!(check(t), Ok(()), "refused: {t}");
        }
    }

    #[test]
    fn a_template_that_does_not_parse_is_left_to_the_compiler() {
        assert_eq!(check("{% set %}"), Ok(()));
    }
}
