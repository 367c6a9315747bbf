//! Walking a chat template's syntax tree (minijinja's `unstable_machinery` parser), for the
//! load-time checks in template_namespaces.rs and template_growth.rs.

use minijinja::machinery::{ast, parse, WhitespaceConfig};

/// The template's syntax tree, or None when it does not parse (the compiler then reports it
/// with its own message).
pub(super) fn parse_template(source: &str) -> Option<ast::Stmt<'_>> {
    parse(
        source,
        "chat_template",
        // Default syntax (a unit struct without minijinja's `custom_syntax` feature).
        Default::default(),
        WhitespaceConfig::default(),
    )
    .ok()
}

pub(super) fn call_arg_exprs<'x, 'a>(
    args: &'x [ast::CallArg<'a>],
) -> impl Iterator<Item = &'x ast::Expr<'a>> {
    args.iter().map(|a| match a {
        ast::CallArg::Pos(e)
        | ast::CallArg::Kwarg(_, e)
        | ast::CallArg::PosSplat(e)
        | ast::CallArg::KwargSplat(e) => e,
    })
}

/// The names a binding target assigns (`x`, `a, b`, nested lists).
pub(super) fn target_names<'a>(t: &ast::Expr<'a>, out: &mut Vec<&'a str>) {
    match t {
        ast::Expr::Var(v) => out.push(v.id),
        ast::Expr::List(l) => l.items.iter().for_each(|i| target_names(i, out)),
        _ => {}
    }
}

/// The top-level expressions of statement `s` (not those of its children).
pub(super) fn stmt_exprs<'x, 'a>(s: &'x ast::Stmt<'a>) -> Vec<&'x ast::Expr<'a>> {
    use ast::Stmt as S;
    let mut v = Vec::new();
    match s {
        S::EmitExpr(x) => v.push(&x.expr),
        S::ForLoop(x) => {
            v.push(&x.iter);
            v.extend(&x.filter_expr);
        }
        S::IfCond(x) => v.push(&x.expr),
        S::WithBlock(x) => v.extend(x.assignments.iter().map(|(_, e)| e)),
        S::Set(x) => v.extend([&x.target, &x.expr]),
        S::SetBlock(x) => v.extend(&x.filter),
        S::AutoEscape(x) => v.push(&x.enabled),
        S::FilterBlock(x) => v.push(&x.filter),
        S::Macro(m) => v.extend(&m.defaults),
        S::CallBlock(c) => {
            // The call's callee and arguments, each an expression of its own.
            v.extend(call_arg_exprs(&c.call.args));
            v.push(&c.call.expr);
            v.extend(&c.macro_decl.defaults);
        }
        S::Do(d) => {
            v.extend(call_arg_exprs(&d.call.args));
            v.push(&d.call.expr);
        }
        S::Import(i) => v.push(&i.expr),
        S::FromImport(x) => v.push(&x.expr),
        S::Extends(x) => v.push(&x.name),
        S::Include(x) => v.push(&x.name),
        S::Template(_) | S::EmitRaw(_) | S::Block(_) | S::Continue(_) | S::Break(_) => {}
    }
    v
}

/// The statements directly inside `s`.
pub(super) fn child_stmts<'x, 'a>(s: &'x ast::Stmt<'a>) -> Vec<&'x ast::Stmt<'a>> {
    use ast::Stmt as S;
    let bodies: Vec<&'x [ast::Stmt<'a>]> = match s {
        S::Template(t) => vec![&t.children],
        S::ForLoop(x) => vec![&x.body, &x.else_body],
        S::IfCond(x) => vec![&x.true_body, &x.false_body],
        S::WithBlock(x) => vec![&x.body],
        S::SetBlock(x) => vec![&x.body],
        S::AutoEscape(x) => vec![&x.body],
        S::FilterBlock(x) => vec![&x.body],
        S::Block(x) => vec![&x.body],
        S::Macro(m) => vec![&m.body],
        S::CallBlock(c) => vec![&c.macro_decl.body],
        S::EmitExpr(_)
        | S::EmitRaw(_)
        | S::Set(_)
        | S::Import(_)
        | S::FromImport(_)
        | S::Extends(_)
        | S::Include(_)
        | S::Continue(_)
        | S::Break(_)
        | S::Do(_) => vec![],
    };
    bodies.into_iter().flatten().collect()
}

/// `s` and every statement nested in it, parents first.
pub(super) fn all_stmts<'x, 'a>(s: &'x ast::Stmt<'a>) -> Vec<&'x ast::Stmt<'a>> {
    let mut out = Vec::new();
    let mut pending = vec![s];
    while let Some(s) = pending.pop() {
        out.push(s);
        pending.extend(child_stmts(s).into_iter().rev());
    }
    out
}

/// Calls `f` on `e` and every expression nested in it (the parser bounds the nesting depth).
pub(super) fn walk_expr<'x, 'a>(e: &'x ast::Expr<'a>, f: &mut dyn FnMut(&'x ast::Expr<'a>)) {
    use ast::Expr as E;
    f(e);
    match e {
        E::Var(_) | E::Const(_) => {}
        E::Slice(s) => {
            walk_expr(&s.expr, f);
            for x in [&s.start, &s.stop, &s.step].into_iter().flatten() {
                walk_expr(x, f);
            }
        }
        E::UnaryOp(u) => walk_expr(&u.expr, f),
        E::BinOp(b) => {
            walk_expr(&b.left, f);
            walk_expr(&b.right, f);
        }
        E::Compare(c) => {
            walk_expr(&c.expr, f);
            c.ops.iter().for_each(|o| walk_expr(&o.expr, f));
        }
        E::IfExpr(i) => {
            walk_expr(&i.test_expr, f);
            walk_expr(&i.true_expr, f);
            if let Some(x) = &i.false_expr {
                walk_expr(x, f);
            }
        }
        E::Filter(x) => {
            if let Some(v) = &x.expr {
                walk_expr(v, f);
            }
            call_arg_exprs(&x.args).for_each(|a| walk_expr(a, f));
        }
        E::Test(x) => {
            walk_expr(&x.expr, f);
            call_arg_exprs(&x.args).for_each(|a| walk_expr(a, f));
        }
        E::GetAttr(g) => walk_expr(&g.expr, f),
        E::GetItem(g) => {
            walk_expr(&g.expr, f);
            walk_expr(&g.subscript_expr, f);
        }
        E::Call(c) => {
            walk_expr(&c.expr, f);
            call_arg_exprs(&c.args).for_each(|a| walk_expr(a, f));
        }
        E::List(l) => l.items.iter().for_each(|i| walk_expr(i, f)),
        E::Map(m) => m.keys.iter().chain(&m.values).for_each(|v| walk_expr(v, f)),
    }
}
