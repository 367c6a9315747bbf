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
//! (flow-insensitive, so conservative): a `namespace(…)` call does; a variable does when any
//! binding of it (set, for, with, macro parameter, import) may; lists, maps, `+`, `*`, `and`,
//! `or`, conditionals, item access, slices and most filters pass it through; strings, numbers,
//! comparisons, tests, `~` and macro calls do not. An attribute read from a name bound only to
//! `namespace(…)` calls cannot, because this check also refuses namespaces constructed from
//! values that may hold one. Real chat templates (SmolLM2, Qwen2.5/3, Llama 3.x, Gemma) store
//! strings, numbers and booleans into their namespaces and pass.

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

#[derive(Default)]
struct Scan<'a> {
    /// Names some binding of which may hold a namespace.
    tainted: HashSet<&'a str>,
    /// Names with at least one binding, and whether every binding is a `namespace(…)` call.
    only_namespaces: HashMap<&'a str, bool>,
    macros: HashSet<&'a str>,
    /// Some call passes an argument that may hold a namespace: every macro parameter may.
    calls_pass_namespaces: bool,
    changed: bool,
    violation: Option<String>,
}

fn is_namespace_call(e: &ast::Expr) -> bool {
    matches!(e, ast::Expr::Call(c) if matches!(&c.expr, ast::Expr::Var(v) if v.id == "namespace"))
}

impl<'a> Scan<'a> {
    fn taint(&mut self, names: &[&'a str]) {
        for &n in names {
            if self.tainted.insert(n) {
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
                self.macros.insert(m.name);
                m.args.iter().for_each(|a| self.bound(a, false));
            }
            S::CallBlock(c) => c.macro_decl.args.iter().for_each(|a| self.bound(a, false)),
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
        let mut names = Vec::new();
        match s {
            S::Set(x) if self.may_hold(&x.expr) => target_names(&x.target, &mut names),
            S::ForLoop(x) if self.may_hold(&x.iter) => {
                target_names(&x.target, &mut names);
                names.push("loop");
            }
            S::WithBlock(x) => {
                for (t, e) in &x.assignments {
                    if self.may_hold(e) {
                        target_names(t, &mut names);
                    }
                }
            }
            S::Macro(m) => self.bind_params(&m.args, &m.defaults, &mut names),
            S::CallBlock(c) => {
                self.bind_params(&c.macro_decl.args, &c.macro_decl.defaults, &mut names)
            }
            // A module exports its top-level variables, namespaces included.
            S::Import(i) => target_names(&i.name, &mut names),
            S::FromImport(f) => {
                for (name, alias) in &f.names {
                    target_names(alias.as_ref().unwrap_or(name), &mut names);
                }
            }
            _ => {}
        }
        self.taint(&names);
        self.visit_exprs(s, &mut |me, e| me.note_calls(e));
        self.children(s, |me, c| me.bind(c));
    }

    fn bind_params(
        &self,
        args: &[ast::Expr<'a>],
        defaults: &[ast::Expr<'a>],
        out: &mut Vec<&'a str>,
    ) {
        if self.calls_pass_namespaces || defaults.iter().any(|d| self.may_hold(d)) {
            args.iter().for_each(|a| target_names(a, out));
            out.extend(["varargs", "kwargs", "caller"]);
        }
    }

    /// Records whether any call anywhere in `e` passes an argument that may hold a namespace.
    fn note_calls(&mut self, e: &ast::Expr<'a>) {
        if self.calls_pass_namespaces {
            return;
        }
        let mut found = false;
        walk_expr(e, &mut |x| {
            if let ast::Expr::Call(c) = x {
                found |= !is_namespace_call(x) && call_arg_exprs(&c.args).any(|a| self.may_hold(a));
            }
        });
        if found {
            self.calls_pass_namespaces = true;
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
        use ast::Expr as E;
        match e {
            E::Var(v) => self.tainted.contains(v.id),
            E::Const(_) | E::UnaryOp(_) | E::Compare(_) | E::Test(_) => false,
            E::BinOp(b) => match b.op {
                ast::BinOpKind::ScAnd
                | ast::BinOpKind::ScOr
                | ast::BinOpKind::Add
                | ast::BinOpKind::Mul => self.may_hold(&b.left) || self.may_hold(&b.right),
                _ => false,
            },
            E::IfExpr(i) => {
                self.may_hold(&i.true_expr)
                    || i.false_expr.as_ref().is_some_and(|f| self.may_hold(f))
            }
            E::Filter(f) => {
                !SCALAR_FILTERS.contains(&f.name)
                    && (f.expr.as_ref().is_some_and(|x| self.may_hold(x))
                        || call_arg_exprs(&f.args).any(|a| self.may_hold(a)))
            }
            E::GetAttr(g) => self.read_from(&g.expr),
            E::GetItem(g) => self.read_from(&g.expr),
            E::Slice(s) => self.may_hold(&s.expr),
            E::Call(c) => {
                if is_namespace_call(e) {
                    return true;
                }
                let is_macro = matches!(&c.expr, E::Var(v)
                    if (self.macros.contains(v.id) || v.id == "caller") && !self.tainted.contains(v.id));
                !is_macro
                    && (self.may_hold(&c.expr) || call_arg_exprs(&c.args).any(|a| self.may_hold(a)))
            }
            E::List(l) => l.items.iter().any(|i| self.may_hold(i)),
            E::Map(m) => m.keys.iter().chain(&m.values).any(|v| self.may_hold(v)),
        }
    }

    /// Whether an attribute or item read from `e` may be a namespace: not from a name bound
    /// only to namespaces (they hold none, by this check), else whatever `e` may hold.
    fn read_from(&self, e: &ast::Expr<'a>) -> bool {
        if let ast::Expr::Var(v) = e {
            if self.only_namespaces.get(v.id) == Some(&true) {
                return false;
            }
        }
        self.may_hold(e)
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
            S::CallBlock(c) => Some(&c.call.args),
            S::Do(d) => Some(&d.call.args),
            _ => None,
        };
        if let Some(args) = own_call {
            if !self.calls_pass_namespaces && call_arg_exprs(args).any(|a| self.may_hold(a)) {
                self.calls_pass_namespaces = true;
                self.changed = true;
            }
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
