//! Structural PTX parser: module directives, variables, functions and
//! instruction statements (kept as opcode text plus operand trees; the
//! decoder turns them into [`crate::ir::Inst`]).

use crate::ir::Ty;
use crate::lexer::{lex, Tok, Token};
use crate::ParseError;

/// State space of a declared variable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum VSpace {
    Global,
    Const,
    Shared,
    Local,
    Param,
    /// Register parameter of an old-style `.func` (`.reg .b32 x`).
    Reg,
}

/// One initializer element.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum InitVal<'a> {
    Num(Imm),
    /// Address of a symbol (a variable or a function), resolved when the
    /// module's variables are placed.
    Sym(&'a str),
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct PVar<'a> {
    pub(crate) name: &'a str,
    pub(crate) space: VSpace,
    pub(crate) ty: Ty,
    pub(crate) align: usize,
    /// Number of elements; `None` for `name[]` without initializer.
    pub(crate) count: Option<usize>,
    pub(crate) init: Option<Vec<InitVal<'a>>>,
    pub(crate) is_extern: bool,
    /// `.texref` / `.samplerref` / `.surfref`: no storage we model.
    pub(crate) opaque: bool,
    pub(crate) line: u32,
}

impl PVar<'_> {
    pub(crate) fn size(&self) -> usize {
        self.count.unwrap_or(0) * self.ty.bytes()
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Imm {
    Int(u64),
    F32(u32),
    F64(u64),
    /// Decimal floating-point literal.
    Dec(f64),
}

impl Imm {
    fn neg(self) -> Imm {
        match self {
            Imm::Int(v) => Imm::Int(v.wrapping_neg()),
            Imm::F32(v) => Imm::F32(v ^ 0x8000_0000),
            Imm::F64(v) => Imm::F64(v ^ (1 << 63)),
            Imm::Dec(v) => Imm::Dec(-v),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Operand<'a> {
    Name(&'a str),
    Imm(Imm),
    /// `!%p`
    Not(&'a str),
    /// `%r|%p`
    Pair(&'a str, &'a str),
    /// `sym+4` outside brackets.
    SymOff(&'a str, i64),
    /// `[base+off]`; base is a name or an immediate address.
    Addr(Box<Operand<'a>>, i64),
    /// `[object, coordinates]` of a texture or surface access.
    TexAddr(&'a str, Box<Operand<'a>>),
    /// `{a, b}`
    Vec(Vec<Operand<'a>>),
    /// `(a, b)` in call syntax.
    List(Vec<Operand<'a>>),
    /// `_`
    Sink,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct PInst<'a> {
    pub(crate) guard: Option<(&'a str, bool)>,
    pub(crate) opcode: &'a str,
    pub(crate) ops: Vec<Operand<'a>>,
    pub(crate) line: u32,
    /// Operand syntax the parser does not understand (the instruction is
    /// then unsupported, not a parse error).
    pub(crate) bad: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Stmt<'a> {
    Open,
    Close,
    Label(&'a str),
    /// `.reg .ty name` or `.reg .ty name<count>`.
    Reg {
        ty: Option<Ty>,
        name: &'a str,
        count: Option<u32>,
    },
    Var(PVar<'a>),
    Inst(PInst<'a>),
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct PFunc<'a> {
    pub(crate) name: &'a str,
    pub(crate) entry: bool,
    pub(crate) rets: Vec<PVar<'a>>,
    pub(crate) params: Vec<PVar<'a>>,
    pub(crate) body: Option<Vec<Stmt<'a>>>,
    pub(crate) ntid: Option<[u32; 3]>,
    pub(crate) line: u32,
}

#[derive(Debug, Default)]
pub(crate) struct PModule<'a> {
    pub(crate) funcs: Vec<PFunc<'a>>,
    pub(crate) vars: Vec<PVar<'a>>,
}

/// Parses a numeric literal (`12`, `-`-less), `0x1F`, `0f3F800000`, `0d...`, `1.5`.
pub(crate) fn parse_num(s: &str) -> Option<Imm> {
    // PTX's one predefined constant: the warp size.
    if s == "WARP_SZ" {
        return Some(Imm::Int(32));
    }
    let s = s.strip_suffix(['U', 'u']).unwrap_or(s);
    let lower = s.as_bytes();
    if lower.len() > 2 && lower[0] == b'0' {
        let rest = &s[2..];
        match lower[1] {
            b'x' | b'X' => return u64::from_str_radix(rest, 16).ok().map(Imm::Int),
            b'f' | b'F' if rest.len() == 8 => {
                return u32::from_str_radix(rest, 16).ok().map(Imm::F32)
            }
            b'd' | b'D' if rest.len() == 16 => {
                return u64::from_str_radix(rest, 16).ok().map(Imm::F64)
            }
            b'b' | b'B' => return u64::from_str_radix(rest, 2).ok().map(Imm::Int),
            _ => {}
        }
    }
    if !s.as_bytes().first()?.is_ascii_digit() {
        return None;
    }
    if let Ok(v) = s.parse::<u64>() {
        return Some(Imm::Int(v));
    }
    s.parse::<f64>().ok().map(Imm::Dec)
}

struct P<'a> {
    t: Vec<Token<'a>>,
    i: usize,
}

type R<T> = Result<T, ParseError>;

impl<'a> P<'a> {
    fn peek(&self) -> Option<Tok<'a>> {
        self.t.get(self.i).map(|t| t.tok)
    }
    fn line(&self) -> u32 {
        self.t
            .get(self.i)
            .or(self.t.last())
            .map(|t| t.line)
            .unwrap_or(0)
    }
    fn err<T>(&self, msg: impl Into<String>) -> R<T> {
        Err(ParseError::Syntax {
            line: self.line(),
            msg: msg.into(),
        })
    }
    fn next(&mut self) -> Option<Tok<'a>> {
        let t = self.peek();
        self.i += 1;
        t
    }
    fn is(&self, c: char) -> bool {
        self.peek() == Some(Tok::Punct(c))
    }
    fn eat(&mut self, c: char) -> bool {
        if self.is(c) {
            self.i += 1;
            true
        } else {
            false
        }
    }
    fn expect(&mut self, c: char) -> R<()> {
        if self.eat(c) {
            Ok(())
        } else {
            self.err(format!("expected `{c}`, found {:?}", self.peek()))
        }
    }
    fn word(&mut self) -> R<&'a str> {
        match self.next() {
            Some(Tok::Word(w)) => Ok(w),
            t => {
                self.i -= 1;
                self.err(format!("expected identifier, found {t:?}"))
            }
        }
    }
    fn peek_word(&self) -> Option<&'a str> {
        match self.peek() {
            Some(Tok::Word(w)) => Some(w),
            _ => None,
        }
    }
    fn number(&mut self) -> R<u64> {
        let w = self.word()?;
        match parse_num(w) {
            Some(Imm::Int(v)) => Ok(v),
            _ => self.err(format!("expected integer, found `{w}`")),
        }
    }
    /// Skips the rest of the current source line (for `.loc`, `.file`).
    fn skip_line(&mut self, line: u32) {
        while self.i < self.t.len() && self.t[self.i].line == line {
            self.i += 1;
        }
    }
    /// Skips a balanced `{ ... }` group starting at the current `{`.
    fn skip_braces(&mut self) {
        let mut depth = 0usize;
        while let Some(t) = self.next() {
            match t {
                Tok::Punct('{') => depth += 1,
                Tok::Punct('}') => {
                    depth = depth.saturating_sub(1);
                    if depth == 0 {
                        return;
                    }
                }
                _ => {}
            }
        }
    }
    fn skip_statement(&mut self) {
        while let Some(t) = self.next() {
            if t == Tok::Punct(';') {
                return;
            }
        }
    }
}

/// Parses a whole module.
pub(crate) fn parse(src: &str) -> R<PModule<'_>> {
    let mut p = P { t: lex(src), i: 0 };
    let mut m = PModule::default();
    while let Some(tok) = p.peek() {
        let line = p.line();
        match tok {
            Tok::Punct(';') => {
                p.i += 1;
            }
            Tok::Word(".loc" | ".file") => p.skip_line(line),
            Tok::Word(".version" | ".target" | ".address_size") => p.skip_line(line),
            Tok::Word(".section") => {
                while p.peek().is_some() && !p.is('{') && !p.is(';') {
                    p.i += 1;
                }
                if p.is('{') {
                    p.skip_braces();
                } else {
                    p.i += 1;
                }
            }
            Tok::Word(".pragma") => p.skip_statement(),
            Tok::Word(_) => parse_toplevel(&mut p, &mut m)?,
            other => return p.err(format!("unexpected {other:?} at module scope")),
        }
    }
    Ok(m)
}

fn parse_toplevel<'a>(p: &mut P<'a>, m: &mut PModule<'a>) -> R<()> {
    let mut is_extern = false;
    loop {
        match p.peek_word() {
            Some(".visible" | ".weak" | ".common") => p.i += 1,
            Some(".extern") => {
                is_extern = true;
                p.i += 1
            }
            _ => break,
        }
    }
    match p.peek_word() {
        Some(".entry") | Some(".func") => {
            let f = parse_function(p)?;
            m.funcs.push(f);
            Ok(())
        }
        Some(".global" | ".const" | ".shared" | ".local") => {
            let mut v = parse_var(p)?;
            v.is_extern = is_extern;
            p.expect(';')?;
            if !v.opaque {
                m.vars.push(v);
            }
            Ok(())
        }
        Some(w) if w.starts_with('.') => {
            // Unknown directive: skip it.
            tracing::debug!("ignoring PTX directive {w}");
            if p.t[p.i..]
                .iter()
                .take_while(|t| t.tok != Tok::Punct(';'))
                .any(|t| t.tok == Tok::Punct('{'))
            {
                while !p.is('{') {
                    p.i += 1;
                }
                p.skip_braces();
            } else {
                p.skip_statement();
            }
            Ok(())
        }
        _ => p.err(format!("unexpected {:?} at module scope", p.peek())),
    }
}

/// Parses `.space [.align N] [.ptr ...] .type name[dims] [= init]` (without `;`).
fn parse_var<'a>(p: &mut P<'a>) -> R<PVar<'a>> {
    let line = p.line();
    let space = match p.word()? {
        ".global" => VSpace::Global,
        ".const" => VSpace::Const,
        ".shared" => VSpace::Shared,
        ".local" => VSpace::Local,
        ".param" => VSpace::Param,
        w => return p.err(format!("unknown state space `{w}`")),
    };
    let mut align = None;
    let mut ty = None;
    let mut vec = 1usize;
    let mut in_ptr = false;
    let mut opaque = false;
    let name;
    loop {
        let w = p.word()?;
        match w {
            ".texref" | ".samplerref" | ".surfref" => {
                opaque = true;
                ty = Some(Ty::B64);
            }
            ".align" => {
                let a = p.number()? as usize;
                // `.ptr .align N` describes the pointee, not the parameter.
                if !in_ptr {
                    align = Some(a);
                }
            }
            ".ptr" => in_ptr = true,
            ".v2" => vec = 2,
            ".v4" => vec = 4,
            ".v8" => vec = 8,
            ".global" | ".shared" | ".const" | ".local" if in_ptr => {}
            _ if w.starts_with('.') => {
                if let Some(t) = Ty::parse(&w[1..]) {
                    ty = Some(t);
                } else {
                    tracing::debug!("ignoring variable attribute {w}");
                }
            }
            _ => {
                name = w;
                break;
            }
        }
    }
    let ty = match ty {
        Some(t) => t,
        None => return p.err(format!("variable `{name}` has no type")),
    };
    let mut count = Some(vec);
    let mut dims_open = false;
    while p.eat('[') {
        if p.eat(']') {
            dims_open = true;
            count = None;
        } else {
            let n = p.number()? as usize;
            p.expect(']')?;
            count = count.map(|c| c * n);
        }
    }
    let mut init = None;
    if p.eat('=') && opaque {
        // Sampler initializers (`= { addr_mode_0 = wrap, ... }`) are not modelled.
        p.skip_braces();
    } else if p.t[p.i - 1].tok == Tok::Punct('=') {
        let mut vals = Vec::new();
        parse_init(p, &mut vals)?;
        if dims_open {
            count = Some(vals.len() * vec);
        }
        init = Some(vals);
    }
    let align = align.unwrap_or(ty.bytes() * vec).max(1);
    Ok(PVar {
        name,
        space,
        ty,
        align,
        count,
        init,
        is_extern: false,
        opaque,
        line,
    })
}

fn parse_init<'a>(p: &mut P<'a>, out: &mut Vec<InitVal<'a>>) -> R<()> {
    if p.eat('{') {
        if p.eat('}') {
            return Ok(());
        }
        loop {
            parse_init(p, out)?;
            if p.eat('}') {
                return Ok(());
            }
            p.expect(',')?;
        }
    }
    let neg = p.eat('-');
    let w = p.word()?;
    if let Some(n) = parse_num(w) {
        out.push(InitVal::Num(if neg { n.neg() } else { n }));
        return Ok(());
    }
    // Symbol address: `sym`, `sym+4`, `generic(sym)`, `generic(sym)+4`.
    let mut sym = w;
    if p.eat('(') {
        sym = p.word()?;
        p.expect(')')?;
    }
    if p.eat('+') {
        p.word()?;
        // An offset into a symbol is not modelled: left as zero.
        out.push(InitVal::Num(Imm::Int(0)));
        return Ok(());
    }
    out.push(InitVal::Sym(sym));
    Ok(())
}

fn parse_param_list<'a>(p: &mut P<'a>) -> R<Vec<PVar<'a>>> {
    let mut v = Vec::new();
    p.expect('(')?;
    if p.eat(')') {
        return Ok(v);
    }
    loop {
        if p.peek_word() == Some(".reg") {
            // `.reg .b32 x` parameters of old-style functions: treat as .param.
            p.i += 1;
            v.push(parse_var_after_space(p, VSpace::Reg)?);
        } else {
            v.push(parse_var(p)?);
        }
        if p.eat(')') {
            return Ok(v);
        }
        p.expect(',')?;
    }
}

fn parse_var_after_space<'a>(p: &mut P<'a>, space: VSpace) -> R<PVar<'a>> {
    let line = p.line();
    let mut ty = None;
    let name = loop {
        let w = p.word()?;
        if let Some(t) = w.strip_prefix('.').and_then(Ty::parse) {
            ty = Some(t);
        } else if !w.starts_with('.') {
            break w;
        }
    };
    let ty = ty.unwrap_or(Ty::B64);
    Ok(PVar {
        name,
        space,
        ty,
        align: ty.bytes(),
        count: Some(1),
        init: None,
        is_extern: false,
        opaque: false,
        line,
    })
}

fn parse_function<'a>(p: &mut P<'a>) -> R<PFunc<'a>> {
    let line = p.line();
    let entry = p.word()? == ".entry";
    let rets = if p.is('(') {
        parse_param_list(p)?
    } else {
        Vec::new()
    };
    let name = p.word()?;
    let params = if p.is('(') {
        parse_param_list(p)?
    } else {
        Vec::new()
    };
    let mut ntid = None;
    loop {
        match p.peek() {
            Some(Tok::Punct(';')) => {
                p.i += 1;
                return Ok(PFunc {
                    name,
                    entry,
                    rets,
                    params,
                    body: None,
                    ntid,
                    line,
                });
            }
            Some(Tok::Punct('{')) => break,
            Some(Tok::Word(".maxntid" | ".reqntid")) => {
                p.i += 1;
                let mut d = [1u32; 3];
                d[0] = p.number()? as u32;
                for slot in d.iter_mut().skip(1) {
                    if p.eat(',') {
                        *slot = p.number()? as u32;
                    }
                }
                ntid = Some(d);
            }
            Some(_) => p.i += 1,
            None => return p.err(format!("unterminated function `{name}`")),
        }
    }
    let body = parse_body(p)?;
    Ok(PFunc {
        name,
        entry,
        rets,
        params,
        body: Some(body),
        ntid,
        line,
    })
}

fn parse_body<'a>(p: &mut P<'a>) -> R<Vec<Stmt<'a>>> {
    p.expect('{')?;
    let mut out = Vec::new();
    let mut depth = 1;
    loop {
        let line = p.line();
        let Some(tok) = p.peek() else {
            return p.err("unterminated function body");
        };
        match tok {
            Tok::Punct('{') => {
                p.i += 1;
                depth += 1;
                out.push(Stmt::Open);
            }
            Tok::Punct('}') => {
                p.i += 1;
                depth -= 1;
                if depth == 0 {
                    return Ok(out);
                }
                out.push(Stmt::Close);
            }
            Tok::Punct(';') => p.i += 1,
            Tok::Word(".loc" | ".file") => p.skip_line(line),
            Tok::Word(".pragma" | ".maxnreg" | ".section") => p.skip_statement(),
            Tok::Word(".reg") => {
                p.i += 1;
                parse_reg_decl(p, &mut out)?;
            }
            Tok::Word(".local" | ".shared" | ".param" | ".const" | ".global") => {
                let v = parse_var(p)?;
                p.expect(';')?;
                out.push(Stmt::Var(v));
            }
            Tok::Word(w) if p.t.get(p.i + 1).map(|t| t.tok) == Some(Tok::Punct(':')) => {
                p.i += 2;
                out.push(Stmt::Label(w));
            }
            Tok::Word(w) if w.starts_with('.') => {
                tracing::debug!("ignoring directive {w} in function body");
                p.skip_statement();
            }
            _ => out.push(Stmt::Inst(parse_inst(p)?)),
        }
    }
}

fn parse_reg_decl<'a>(p: &mut P<'a>, out: &mut Vec<Stmt<'a>>) -> R<()> {
    let mut ty = None;
    let mut is_vec = false;
    while let Some(w) = p.peek_word().filter(|w| w.starts_with('.')) {
        p.i += 1;
        match w {
            ".v2" | ".v4" => is_vec = true,
            _ => ty = Ty::parse(&w[1..]),
        }
    }
    if is_vec {
        ty = None; // vector registers are not supported; left untyped
    }
    loop {
        let name = p.word()?;
        let mut count = None;
        if p.eat('<') {
            count = Some(p.number()? as u32);
            p.expect('>')?;
        }
        out.push(Stmt::Reg { ty, name, count });
        if p.eat(';') {
            return Ok(());
        }
        p.expect(',')?;
    }
}

fn parse_inst<'a>(p: &mut P<'a>) -> R<PInst<'a>> {
    let line = p.line();
    let mut guard = None;
    if p.eat('@') {
        let neg = p.eat('!');
        guard = Some((p.word()?, neg));
    }
    let opcode = p.word()?;
    let mut ops = Vec::new();
    let mut bad = None;
    if !p.eat(';') {
        let start = p.i;
        let res = (|| -> R<()> {
            loop {
                ops.push(parse_operand(p)?);
                if p.eat(';') {
                    return Ok(());
                }
                p.expect(',')?;
            }
        })();
        if let Err(e) = res {
            // Unknown operand syntax: keep the instruction, mark it unsupported.
            p.i = start;
            let mut depth = 0usize;
            while let Some(t) = p.next() {
                match t {
                    Tok::Punct(';') if depth == 0 => break,
                    Tok::Punct('{') => depth += 1,
                    Tok::Punct('}') if depth == 0 => {
                        // Do not run past the end of the function body.
                        p.i -= 1;
                        return Err(e);
                    }
                    Tok::Punct('}') => depth -= 1,
                    _ => {}
                }
            }
            bad = Some(e.to_string());
            ops.clear();
        }
    }
    Ok(PInst {
        guard,
        opcode,
        ops,
        line,
        bad,
    })
}

fn parse_signed(p: &mut P<'_>) -> R<i64> {
    let neg = p.eat('-');
    let v = p.number()? as i64;
    Ok(if neg { v.wrapping_neg() } else { v })
}

fn parse_operand<'a>(p: &mut P<'a>) -> R<Operand<'a>> {
    if p.eat('[') {
        let base = if p.is('-') {
            Operand::Imm(Imm::Int(parse_signed(p)? as u64))
        } else {
            let w = p.word()?;
            match parse_num(w) {
                Some(n) => Operand::Imm(n),
                None => Operand::Name(w),
            }
        };
        if let Operand::Name(object) = base {
            if p.eat(',') {
                let coords = parse_operand(p)?;
                p.expect(']')?;
                return Ok(Operand::TexAddr(object, Box::new(coords)));
            }
        }
        let mut off = 0i64;
        while p.eat('+') {
            off = off.wrapping_add(parse_signed(p)?);
        }
        if p.eat('-') {
            off = off.wrapping_sub(p.number()? as i64);
        }
        p.expect(']')?;
        return Ok(Operand::Addr(Box::new(base), off));
    }
    if p.is('{') || p.is('(') {
        let close = if p.eat('{') {
            '}'
        } else {
            p.i += 1;
            ')'
        };
        let mut v = Vec::new();
        if !p.eat(close) {
            loop {
                v.push(parse_operand(p)?);
                if p.eat(close) {
                    break;
                }
                p.expect(',')?;
            }
        }
        return Ok(if close == '}' {
            Operand::Vec(v)
        } else {
            Operand::List(v)
        });
    }
    if p.eat('!') {
        return Ok(Operand::Not(p.word()?));
    }
    if p.eat('-') {
        let w = p.word()?;
        return match parse_num(w) {
            Some(n) => Ok(Operand::Imm(n.neg())),
            None => p.err(format!("bad negative operand `{w}`")),
        };
    }
    let w = p.word()?;
    if w == "_" {
        return Ok(Operand::Sink);
    }
    if let Some(n) = parse_num(w) {
        return Ok(Operand::Imm(n));
    }
    if p.eat('|') {
        return Ok(Operand::Pair(w, p.word()?));
    }
    if p.is('+') {
        let mut off = 0i64;
        while p.eat('+') {
            off = off.wrapping_add(parse_signed(p)?);
        }
        return Ok(Operand::SymOff(w, off));
    }
    Ok(Operand::Name(w))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers() {
        assert_eq!(parse_num("0f3F800000"), Some(Imm::F32(0x3F80_0000)));
        assert_eq!(
            parse_num("0d3FF0000000000000"),
            Some(Imm::F64(0x3FF0_0000_0000_0000))
        );
        assert_eq!(parse_num("0xFFFFFFFF"), Some(Imm::Int(0xFFFF_FFFF)));
        assert_eq!(parse_num("42"), Some(Imm::Int(42)));
        assert_eq!(parse_num("1.5"), Some(Imm::Dec(1.5)));
        assert_eq!(parse_num("%r1"), None);
    }

    #[test]
    fn operands() {
        let m = parse(
            ".visible .entry k(.param .u64 a)\n{\n.reg .b32 %r<3>;\n.reg .pred %p<2>;\n\
             @!%p1 ld.global.v2.u32 {%r1, _}, [%rd1+-4];\n\
             shfl.sync.down.b32 %r1|%p1, %r2, 1, 31, -1;\nL1:\nbra.uni L1;\n}\n",
        )
        .unwrap();
        let body = m.funcs[0].body.as_ref().unwrap();
        let Stmt::Inst(ld) = &body[2] else { panic!() };
        assert_eq!(ld.guard, Some(("%p1", true)));
        assert_eq!(
            ld.ops[0],
            Operand::Vec(vec![Operand::Name("%r1"), Operand::Sink])
        );
        assert_eq!(
            ld.ops[1],
            Operand::Addr(Box::new(Operand::Name("%rd1")), -4)
        );
        let Stmt::Inst(sh) = &body[3] else { panic!() };
        assert_eq!(sh.ops[0], Operand::Pair("%r1", "%p1"));
        assert_eq!(sh.ops[4], Operand::Imm(Imm::Int(u64::MAX)));
        assert_eq!(body[4], Stmt::Label("L1"));
    }
}
