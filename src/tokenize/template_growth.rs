//! A check run on a model's chat template before it is used: no shape that repeats or doubles a
//! value without bound.
//!
//! Why: minijinja repeats a list lazily (`messages * 10**9` is one instruction of fuel) and
//! computes its length as `len * n` unchecked (a panic in builds with overflow checks: the fuzz
//! finding `{{999999999090999*messages*999998 }}`), and then formats, compares or sums it item by
//! item (`{{999~90999*messages*999998 }}` ran past libFuzzer's timeout). A value that takes
//! itself twice (`{% set ns.x = ns.x + ns.x %}` in a loop) doubles at each pass, and minijinja
//! copies a list concatenated 33 levels deep into one allocation of its full length, which for
//! 2^33 items aborts the process ("memory allocation failed") before any bound can act. The
//! watchdog (template_watchdog.rs) ends a render that runs too long or grows too large, but
//! cannot turn an abort or a panic into an error, so these shapes are refused when the template
//! is loaded:
//!
//! - `a * b` unless one side is surely a string (a literal, a `~`, a string filter: minijinja
//!   then repeats the string eagerly and refuses past 100 MB) or both are surely numbers;
//! - `{% set t = e %}` where `e` may use the value of `t` twice (counting the larger branch of
//!   `if`/`else`, `and`, `or`; not counting tests, comparisons and `length`-like filters).
//!
//! Published templates (the 70 of tests/real_templates.rs) repeat strings, multiply numbers and
//! extend a value by one piece at a time (`{% set ns.s = ns.s + part %}`), so they pass.

use super::template_ast::{all_stmts, call_arg_exprs, parse_template, stmt_exprs, walk_expr};
use minijinja::machinery::ast;
use minijinja::value::ValueKind;
use std::collections::{HashMap, HashSet};

/// Filters whose result is a number or a boolean, whatever their input.
const NUMERIC_FILTERS: &[&str] = &[
    "length",
    "count",
    "int",
    "float",
    "bool",
    "wordcount",
    "round",
];
/// Attributes of the for-loop's `loop` object that are numbers.
const LOOP_NUMBERS: &[&str] = &[
    "index",
    "index0",
    "revindex",
    "revindex0",
    "length",
    "depth",
    "depth0",
];

/// Ok, or the reason the template is refused (with its line).
pub fn check(source: &str) -> Result<(), String> {
    let Some(root) = parse_template(source) else {
        return Ok(());
    };
    let stmts = all_stmts(&root);
    let numbers = Numbers::infer(&stmts);
    for s in &stmts {
        for e in stmt_exprs(s) {
            let mut bad = None;
            walk_expr(e, &mut |x| {
                if let ast::Expr::BinOp(b) = x {
                    if matches!(b.op, ast::BinOpKind::Mul)
                        && !numbers.safe_product(&b.left, &b.right)
                    {
                        bad.get_or_insert(b.span().start_line);
                    }
                }
            });
            if let Some(line) = bad {
                return Err(format!(
                    "line {line}: `*` on a value that may be a list (minijinja repeats a list \
                     without bound); edge-sft accepts `*` when one side is surely a string or \
                     neither side can be a list"
                ));
            }
        }
        if let ast::Stmt::Set(x) = s {
            if let Some(target) = Target::of(&x.target) {
                if uses(&x.expr, &target) >= 2 {
                    return Err(format!(
                        "line {}: `{{% set {} = … %}}` uses its own value twice, so it can \
                         double at every pass (without bound); edge-sft refuses such templates",
                        x.span().start_line,
                        target.describe()
                    ));
                }
            }
        }
    }
    Ok(())
}

/// Names every binding of which is a number.
struct Numbers<'a> {
    names: HashSet<&'a str>,
    /// Every name the template binds somewhere.
    bound: HashSet<&'a str>,
}

impl<'a> Numbers<'a> {
    /// The largest set of names whose every binding is a `set` to a surely numeric expression
    /// (given that set) or a `for` over `range(…)`: start from every candidate and drop names
    /// with a binding that is not, until nothing changes.
    fn infer<'x>(stmts: &[&'x ast::Stmt<'a>]) -> Self {
        type Bindings<'x, 'a> = HashMap<&'a str, Vec<Binding<'x, 'a>>>;
        fn bind<'x, 'a>(map: &mut Bindings<'x, 'a>, t: &ast::Expr<'a>, how: Binding<'x, 'a>) {
            let mut names = Vec::new();
            super::template_ast::target_names(t, &mut names);
            // `set a, b = …` unpacks: its parts are not the expression's value.
            let how = if matches!(t, ast::Expr::Var(_)) {
                how
            } else {
                Binding::Other
            };
            for n in names {
                map.entry(n).or_default().push(how);
            }
        }
        let mut bindings = Bindings::new();
        let mut range_loops = Vec::new();
        for s in stmts {
            use ast::Stmt as S;
            match s {
                S::Set(x) => bind(&mut bindings, &x.target, Binding::Value(&x.expr)),
                S::ForLoop(x) => {
                    let over_range = matches!(&x.iter, ast::Expr::Call(c)
                        if matches!(&c.expr, ast::Expr::Var(v) if v.id == "range"));
                    if over_range {
                        range_loops.push(&x.target);
                    } else {
                        bind(&mut bindings, &x.target, Binding::Other);
                    }
                }
                S::SetBlock(x) => bind(&mut bindings, &x.target, Binding::Other),
                S::WithBlock(x) => x
                    .assignments
                    .iter()
                    .for_each(|(t, e)| bind(&mut bindings, t, Binding::Value(e))),
                S::Macro(m) => macro_params(m, stmts)
                    .into_iter()
                    .for_each(|(p, how)| bindings.entry(p).or_default().push(how)),
                S::CallBlock(c) => c
                    .macro_decl
                    .args
                    .iter()
                    .for_each(|a| bind(&mut bindings, a, Binding::Other)),
                S::Import(i) => bind(&mut bindings, &i.name, Binding::Other),
                S::FromImport(f) => {
                    for (name, alias) in &f.names {
                        bind(
                            &mut bindings,
                            alias.as_ref().unwrap_or(name),
                            Binding::Other,
                        );
                    }
                }
                _ => {}
            }
        }
        // `range` yields numbers unless the template binds the name itself.
        let range_is_builtin = !bindings.contains_key("range");
        for t in range_loops {
            bind(
                &mut bindings,
                t,
                if range_is_builtin {
                    Binding::Number
                } else {
                    Binding::Other
                },
            );
        }
        let mut me = Numbers {
            names: (bindings.iter())
                .filter(|(_, bs)| !bs.iter().any(|b| matches!(b, Binding::Other)))
                .map(|(n, _)| *n)
                .collect(),
            bound: bindings.keys().copied().collect(),
        };
        loop {
            let drop: Vec<&'a str> = (me.names.iter().copied())
                .filter(|n| {
                    bindings[n]
                        .iter()
                        .any(|b| matches!(b, Binding::Value(e) if !me.is_number(e)))
                })
                .collect();
            if drop.is_empty() {
                return me;
            }
            for n in drop {
                me.names.remove(n);
            }
        }
    }

    /// Whether `e` surely evaluates to a number or a boolean, or (a name from the render's
    /// context) at least never to a list; `*` on such values never repeats a list.
    fn is_number(&self, e: &ast::Expr<'a>) -> bool {
        use ast::BinOpKind as K;
        use ast::Expr as E;
        match e {
            E::Const(c) => matches!(c.value.kind(), ValueKind::Number | ValueKind::Bool),
            // A name the template never binds comes from the render's context: `messages` is
            // the one list there; the others (`add_generation_prompt`, the special tokens,
            // `tools` and `documents` as none, anything else undefined) are not lists.
            E::Var(v) => {
                self.names.contains(v.id)
                    || !self.bound.contains(v.id)
                        && !matches!(v.id, "messages" | "varargs" | "kwargs")
            }
            E::UnaryOp(u) => matches!(u.op, ast::UnaryOpKind::Not) || self.is_number(&u.expr),
            E::Compare(_) | E::Test(_) => true,
            E::BinOp(b) => match b.op {
                K::Eq | K::Ne | K::Lt | K::Lte | K::Gt | K::Gte | K::In => true,
                K::Concat => false,
                _ => self.is_number(&b.left) && self.is_number(&b.right),
            },
            E::IfExpr(i) => {
                self.is_number(&i.true_expr)
                    && i.false_expr.as_ref().is_none_or(|f| self.is_number(f))
            }
            E::Filter(f) => NUMERIC_FILTERS.contains(&f.name),
            // minijinja refuses to bind the name `loop` ("reserved variable name").
            E::GetAttr(g) => {
                LOOP_NUMBERS.contains(&g.name) && matches!(&g.expr, E::Var(v) if v.id == "loop")
            }
            _ => false,
        }
    }

    /// Whether `l * r` can only multiply numbers or repeat a string. minijinja takes the string
    /// path whenever either side is a string (and then wants an integer on the other side), and
    /// repeats a string eagerly, refusing past 100 MB; so `'  ' * level` is safe whatever
    /// `level` is, and only a product with no sure string and no sure numbers is refused.
    fn safe_product(&self, l: &ast::Expr<'a>, r: &ast::Expr<'a>) -> bool {
        is_string(l) || is_string(r) || self.is_number(l) && self.is_number(r)
    }
}

/// Filters whose result is always a string.
const STRING_FILTERS: &[&str] = &[
    "string",
    "trim",
    "lower",
    "upper",
    "title",
    "capitalize",
    "replace",
    "join",
    "tojson",
    "indent",
    "format",
    "pprint",
    "escape",
    "e",
    "safe",
    "urlencode",
    "center",
    "truncate",
];

/// Whether `e` surely evaluates to a string (or fails).
fn is_string(e: &ast::Expr) -> bool {
    use ast::Expr as E;
    match e {
        E::Const(c) => c.value.kind() == ValueKind::String,
        E::BinOp(b) => matches!(b.op, ast::BinOpKind::Concat),
        E::IfExpr(i) => is_string(&i.true_expr) && i.false_expr.as_ref().is_some_and(is_string),
        E::Filter(f) => STRING_FILTERS.contains(&f.name),
        _ => false,
    }
}

/// How macro `m`'s parameters are bound: by the arguments of every call of it by name, and by
/// its defaults; `Other` for all of them when it is called with a splat or used as a value
/// (then its callers are unknown).
fn macro_params<'x, 'a>(
    m: &'x ast::Macro<'a>,
    stmts: &[&'x ast::Stmt<'a>],
) -> Vec<(&'a str, Binding<'x, 'a>)> {
    let mut names = Vec::new();
    m.args
        .iter()
        .for_each(|a| super::template_ast::target_names(a, &mut names));
    let mut out: Vec<(&'a str, Binding)> = Vec::new();
    // Defaults belong to the last parameters.
    let first_default = names.len().saturating_sub(m.defaults.len());
    for (p, d) in names[first_default..].iter().zip(&m.defaults) {
        out.push((p, Binding::Value(d)));
    }
    let (mut uses, mut calls) = (0, 0);
    let mut unknown = false;
    let mut note = |callee: &ast::Expr<'a>, args: &'x [ast::CallArg<'a>]| {
        if !matches!(callee, ast::Expr::Var(v) if v.id == m.name) {
            return;
        }
        calls += 1;
        let mut pos = 0;
        for a in args {
            match a {
                ast::CallArg::Pos(e) => {
                    if let Some(p) = names.get(pos) {
                        out.push((p, Binding::Value(e)));
                    }
                    pos += 1;
                }
                ast::CallArg::Kwarg(k, e) => {
                    if let Some(p) = names.iter().find(|p| *p == k) {
                        out.push((p, Binding::Value(e)));
                    }
                }
                ast::CallArg::PosSplat(_) | ast::CallArg::KwargSplat(_) => unknown = true,
            }
        }
    };
    for s in stmts {
        match s {
            ast::Stmt::CallBlock(c) => note(&c.call.expr, &c.call.args),
            ast::Stmt::Do(d) => note(&d.call.expr, &d.call.args),
            _ => {}
        }
        for e in stmt_exprs(s) {
            walk_expr(e, &mut |x| match x {
                ast::Expr::Call(c) => note(&c.expr, &c.args),
                ast::Expr::Var(v) if v.id == m.name => uses += 1,
                _ => {}
            });
        }
    }
    if unknown || uses > calls {
        out = names.iter().map(|p| (*p, Binding::Other)).collect();
    }
    out
}

/// How a name is bound, for the number inference.
#[derive(Clone, Copy)]
enum Binding<'x, 'a> {
    /// `{% set n = e %}`.
    Value(&'x ast::Expr<'a>),
    /// `{% for n in range(…) %}`.
    Number,
    /// Anything else (loops over other values, macro parameters, `with`, imports, blocks).
    Other,
}

/// What a `set` assigns: a variable, or an attribute of a namespace variable.
enum Target<'a> {
    Var(&'a str),
    Attr(&'a str, &'a str),
}

impl<'a> Target<'a> {
    fn of(e: &ast::Expr<'a>) -> Option<Self> {
        match e {
            ast::Expr::Var(v) => Some(Target::Var(v.id)),
            ast::Expr::GetAttr(g) => match &g.expr {
                ast::Expr::Var(v) => Some(Target::Attr(v.id, g.name)),
                _ => None,
            },
            _ => None,
        }
    }

    fn describe(&self) -> String {
        match self {
            Target::Var(v) => v.to_string(),
            Target::Attr(ns, a) => format!("{ns}.{a}"),
        }
    }
}

/// How many times evaluating `e` may use the target's current value: a branch counts as its
/// larger side; tests, comparisons and number-valued filters count nothing (their result holds
/// no copy). The whole namespace counts for an attribute target.
fn uses(e: &ast::Expr, t: &Target) -> usize {
    use ast::BinOpKind as K;
    use ast::Expr as E;
    match e {
        E::Var(v) => usize::from(match t {
            Target::Var(n) | Target::Attr(n, _) => v.id == *n,
        }),
        E::GetAttr(g) => match (t, &g.expr) {
            (Target::Attr(ns, a), E::Var(v)) if v.id == *ns => usize::from(g.name == *a),
            _ => uses(&g.expr, t),
        },
        E::Const(_) | E::Compare(_) | E::Test(_) => 0,
        E::Filter(f) if NUMERIC_FILTERS.contains(&f.name) => 0,
        E::BinOp(b) => match b.op {
            K::Eq | K::Ne | K::Lt | K::Lte | K::Gt | K::Gte | K::In => 0,
            K::ScAnd | K::ScOr => uses(&b.left, t).max(uses(&b.right, t)),
            _ => uses(&b.left, t) + uses(&b.right, t),
        },
        E::IfExpr(i) => {
            let f = i.false_expr.as_ref().map_or(0, |f| uses(f, t));
            uses(&i.true_expr, t).max(f)
        }
        E::UnaryOp(u) => uses(&u.expr, t),
        E::Slice(s) => uses(&s.expr, t),
        E::GetItem(g) => uses(&g.expr, t),
        E::Filter(f) => {
            f.expr.as_ref().map_or(0, |x| uses(x, t))
                + call_arg_exprs(&f.args).map(|a| uses(a, t)).sum::<usize>()
        }
        // A macro given the value once may still return it twice; a method transforms its
        // receiver, and `dict(…)`/`namespace(…)` hold each argument once.
        E::Call(c) => {
            let n = uses(&c.expr, t) + call_arg_exprs(&c.args).map(|a| uses(a, t)).sum::<usize>();
            let holds_once = match &c.expr {
                E::GetAttr(_) => true,
                E::Var(v) => matches!(v.id, "dict" | "namespace"),
                _ => false,
            };
            if n > 0 && !holds_once {
                2
            } else {
                n
            }
        }
        E::List(l) => l.items.iter().map(|i| uses(i, t)).sum(),
        E::Map(m) => m.keys.iter().chain(&m.values).map(|v| uses(v, t)).sum(),
    }
}

#[cfg(test)]
mod tests {
    use super::check;

    #[test]
    fn refuses_unbounded_repeats_and_self_doubling() {
        for t in [
            // The fuzz findings (a timeout and an overflow panic in minijinja's lazy repeat).
            "{{999~90999*messages*999998 }}",
            "{{999999999090999*messages*999998 }}",
            "{{ [1] * 1000000000 == [1] * 1000000000 }}",
            "{{ (messages * 10) | length }}",
            "{% set n = messages %}{{ n * 3 }}",
            "{% set n = 3 %}{% set n = [n] %}{{ n * 3 }}",
            "{% for i in messages %}{{ i * 2 }}{% endfor %}",
            "{% set range = [[1]] %}{% for i in range(3) %}{{ i * 9 }}{% endfor %}",
            "{% macro f(level) %}{{ level * level }}{% endmacro %}{{ f(messages) }}",
            "{% macro f(a, b=[1]) %}{{ b * 9 }}{% endmacro %}{{ f(1) }}",
            "{% macro f(a) %}{{ a * 9 }}{% endmacro %}{{ f(*[messages]) }}",
            "{% macro f(a) %}{{ a * 9 }}{% endmacro %}{% set g = f %}{{ g(messages) }}",
            "{% macro f() %}{{ varargs * 9 }}{% endmacro %}",
            "{% set x = messages[0] %}{{ x * 3 }}",
            // Doubling by taking the old value twice.
            "{% set ns = namespace(x=[1]) %}{% for i in range(60) %}{% set ns.x = ns.x + ns.x %}{% endfor %}",
            "{% set ns = namespace(x='a') %}{% set ns.x = ns.x ~ ns.x %}",
            "{% set x = [x, x] %}",
            "{% set x = x + [x] %}",
            "{% set ns = namespace(x='a') %}{% set ns.x = ns.x ~ ns %}",
            "{% set x = {'a': x, 'b': x} %}",
            "{% set x = '%s%s' | format(x, x) %}",
            "{% macro d(a) %}{{ a }}{{ a }}{% endmacro %}{% set x = d(x) %}",
            "{% set x = x.join([x]) %}",
        ] {
            assert!(check(t).is_err(), "not refused: {t}");
        }
    }

    #[test]
    fn passes_numbers_string_repeats_and_one_piece_at_a_time() {
        for t in [
            "{{ 2 * 3 }}{{ 10 ** 3 * -2 }}{{ '-' * 80 }}{{ 3 * '=' }}",
            "{{ messages | length * 2 }}{{ loop_messages | count * 1.5 }}",
            "{% for m in messages %}{{ ' ' * loop.index0 }}{{ loop.index * 2 }}{% endfor %}",
            "{% for i in range(3) %}{{ i * 4 }}{{ '  ' * i }}{% endfor %}",
            "{% set w = 4 %}{% set w = w * 2 %}{{ ' ' * w }}",
            "{% set n = messages | length %}{% set half = n // 2 %}{{ half * 2 }}",
            "{{ (1 if add_generation_prompt else 0) * 3 }}{{ (messages | length > 2) * 2 }}",
            "{% set ns = namespace(s='', n=0) %}{% for m in messages %}{% set ns.s = ns.s + m['content'] %}{% set ns.n = ns.n + 1 %}{% endfor %}",
            "{% set ns = namespace(x=[]) %}{% set ns.x = ns.x + [messages[0]['role']] %}",
            "{% set content = content.split('</think>')[-1].lstrip('\\n') %}",
            "{% set content = content if content is string else '' %}",
            "{% set c = c | trim if c else c %}",
            "{% set messages = messages[1:] %}{% set x = x | length + x | length %}",
            "{% set ns = namespace(a='', b='') %}{% set ns.a = ns.b ~ ns.b %}",
            "{% set p = dict(role=p) %}",
            "{{ messages | tojson }}",
            // A string on either side: minijinja's eager, capped string repeat.
            "{{ 'ab' * messages }}{{ x * 'ab' }}",
            "{% macro f(level) %}{{ '    ' * level }}{{ '#' * (level + 1) }}{% endmacro %}",
            "{{ (a ~ b) * n }}{{ (x | string) * 3 }}{{ ('a' if c else 'b') * n }}",
            // Macro parameters given numbers at every call (Reka Edge's template, below).
            "{% macro f(n, m=2) %}{{ n * m }}{{ f(n + 1) }}{% endmacro %}{% set k = x | int %}{{ f(k) }}{{ f(n=3) }}",
            // Names from the render's context other than `messages` (Reka Edge's template).
            "{% set repeat_tokens = num_img_tokens * num_video_frames %}{{ '<T>' * repeat_tokens }}",
        ] {
            assert_eq!(check(t), Ok(()), "refused: {t}");
        }
    }
}
