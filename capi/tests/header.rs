//! include/rnn_kernels.h is written by hand; this test keeps it equal to the Rust side.
//!
//! It extracts every `extern "C" fn` from capi/src/*.rs (name, parameter names and types, return
//! type), translates the Rust types to C (`*const f32` → `const float*`, `usize` → `size_t`,
//! `*mut *mut RnnkModel` → `rnnk_model**`, ...), extracts every prototype from the header,
//! normalises its spelling (`float *x` and `float* x` are the same) and requires the two sets to
//! be equal: same functions, same parameter names, types and order, same return type. It also
//! compares the `RNNK_*` status values of `rnnk_status` with the Rust constants.
//!
//! Why not cbindgen: it would pull syn, serde and toml into the build for a 20-function header
//! whose comments (shapes of every buffer) are written for people anyway; a parser of our own
//! signatures is ~150 lines and runs in milliseconds.

use std::collections::BTreeMap;
use std::path::Path;

#[derive(Debug, PartialEq)]
struct Proto {
    ret: String,
    params: Vec<(String, String)>, // (name, C type)
}

/// Rust type (as written in capi/src) to its C spelling in the header.
fn c_type(rust: &str) -> Result<String, String> {
    let t = rust.trim();
    if let Some(rest) = t.strip_prefix("*mut ") {
        return Ok(format!("{}*", c_type(rest)?));
    }
    if let Some(rest) = t.strip_prefix("*const ") {
        let inner = c_type(rest)?;
        return Ok(if inner.ends_with('*') { format!("{inner} const*") } else { format!("const {inner}*") });
    }
    Ok(match t {
        "c_int" => "int",
        "c_char" => "char",
        "usize" => "size_t",
        "u64" => "uint64_t",
        "i64" => "int64_t",
        "u8" => "uint8_t",
        "f32" => "float",
        "c_void" => "void",
        "RnnkModel" => "rnnk_model",
        "RnnkReserve" => "rnnk_reserve",
        "RnnkSteps" => "rnnk_steps",
        "RnnkStepsBackward" => "rnnk_steps_backward",
        "RnnkAttention" => "rnnk_attention",
        "RnnkAttentionMemory" => "rnnk_attention_memory",
        other => return Err(format!("no C spelling for the Rust type `{other}`: add it to c_type in tests/header.rs")),
    }
    .to_string())
}

/// Splits `s` at commas outside brackets.
fn split_top(s: &str) -> Vec<String> {
    let (mut out, mut cur, mut depth) = (Vec::new(), String::new(), 0i32);
    for ch in s.chars() {
        match ch {
            '(' | '<' | '[' => depth += 1,
            ')' | '>' | ']' => depth -= 1,
            ',' if depth == 0 => {
                out.push(std::mem::take(&mut cur));
                continue;
            }
            _ => {}
        }
        cur.push(ch);
    }
    out.push(cur);
    out.into_iter().map(|p| p.trim().to_string()).filter(|p| !p.is_empty()).collect()
}

/// Every `extern "C" fn` of a Rust source text.
fn rust_protos(src: &str) -> Result<BTreeMap<String, Proto>, String> {
    let mut out = BTreeMap::new();
    let key = "extern \"C\" fn ";
    let mut rest = src;
    while let Some(i) = rest.find(key) {
        rest = &rest[i + key.len()..];
        let open = rest.find('(').ok_or("extern fn without '('")?;
        let name = rest[..open].trim().to_string();
        // The matching ')' of the parameter list.
        let mut depth = 0;
        let mut close = None;
        for (j, ch) in rest[open..].char_indices() {
            match ch {
                '(' => depth += 1,
                ')' => {
                    depth -= 1;
                    if depth == 0 {
                        close = Some(open + j);
                        break;
                    }
                }
                _ => {}
            }
        }
        let close = close.ok_or_else(|| format!("{name}: unclosed parameter list"))?;
        let mut params = Vec::new();
        for p in split_top(&rest[open + 1..close]) {
            let (pname, ty) = p.split_once(':').ok_or_else(|| format!("{name}: parameter `{p}` without a type"))?;
            params.push((pname.trim().to_string(), c_type(ty).map_err(|e| format!("{name}: {e}"))?));
        }
        let after = &rest[close + 1..];
        let body = after.find('{').ok_or_else(|| format!("{name}: no body"))?;
        let ret = match after[..body].trim().strip_prefix("->") {
            Some(r) => c_type(r).map_err(|e| format!("{name}: {e}"))?,
            None => "void".to_string(),
        };
        out.insert(name, Proto { ret, params });
        rest = &rest[close..];
    }
    Ok(out)
}

fn strip_c_comments(src: &str) -> String {
    let mut out = String::new();
    let mut rest = src;
    loop {
        let block = rest.find("/*");
        let line = rest.find("//");
        match (block, line) {
            (Some(b), l) if l.is_none_or(|l| b < l) => {
                out.push_str(&rest[..b]);
                rest = rest[b + 2..].find("*/").map_or("", |e| &rest[b + 2 + e + 2..]);
            }
            (_, Some(l)) => {
                out.push_str(&rest[..l]);
                rest = rest[l..].find('\n').map_or("", |e| &rest[l + e..]);
            }
            _ => {
                out.push_str(rest);
                return out;
            }
        }
    }
}

/// `const float *x` → ("x", "const float*").
fn c_decl(decl: &str) -> Result<(String, String), String> {
    let spaced = decl.replace('*', " * ");
    let mut toks: Vec<&str> = spaced.split_whitespace().collect();
    let name = toks.pop().ok_or("empty declaration")?.to_string();
    let mut ty = String::new();
    for t in toks {
        if t == "*" {
            ty.push('*');
        } else {
            if !ty.is_empty() {
                ty.push(' ');
            }
            ty.push_str(t);
        }
    }
    Ok((name, ty))
}

/// Every function prototype of a C header (declarations ending in `);` that are not typedefs).
fn header_protos(src: &str) -> Result<BTreeMap<String, Proto>, String> {
    let code: String = strip_c_comments(src)
        .lines()
        .filter(|l| !l.trim_start().starts_with('#') && l.trim() != "extern \"C\" {" && l.trim() != "}")
        .collect::<Vec<_>>()
        .join("\n");
    let mut out = BTreeMap::new();
    for stmt in code.split(';') {
        let stmt = stmt.split_whitespace().collect::<Vec<_>>().join(" ");
        if stmt.is_empty() || stmt.starts_with("typedef") || stmt.starts_with('}') || !stmt.contains('(') {
            continue;
        }
        let open = stmt.find('(').unwrap();
        let close = stmt.rfind(')').ok_or_else(|| format!("`{stmt}`: no ')'"))?;
        let (name, ret) = c_decl(&stmt[..open])?;
        let inner = stmt[open + 1..close].trim();
        let params = if inner == "void" || inner.is_empty() {
            Vec::new()
        } else {
            split_top(inner).iter().map(|d| c_decl(d)).collect::<Result<_, _>>()?
        };
        out.insert(name, Proto { ret, params });
    }
    Ok(out)
}

/// `RNNK_X = N` entries of the header, `pub const RNNK_X: c_int = N;` of the Rust source.
fn header_codes(src: &str) -> BTreeMap<String, i64> {
    let code = strip_c_comments(src);
    let Some(start) = code.find("typedef enum rnnk_status") else { return BTreeMap::new() };
    let body = &code[start..code[start..].find('}').map_or(code.len(), |e| start + e)];
    let body = &body[body.find('{').map_or(0, |b| b + 1)..];
    split_top(body)
        .iter()
        .filter_map(|e| e.split_once('=').map(|(k, v)| (k.trim().to_string(), v.trim().parse().expect("status value"))))
        .collect()
}

fn rust_codes(src: &str) -> BTreeMap<String, i64> {
    src.lines()
        .filter_map(|l| l.trim().strip_prefix("pub const "))
        .filter(|l| l.starts_with("RNNK_"))
        .filter_map(|l| {
            let (name, rest) = l.split_once(':')?;
            let v = rest.split_once('=')?.1.trim().trim_end_matches(';');
            Some((name.trim().to_string(), v.parse().expect("status value")))
        })
        .collect()
}

/// Every difference between the Rust side and the header, in words.
fn differences(rust_src: &str, header: &str) -> Vec<String> {
    let mut diffs = Vec::new();
    let rust = match rust_protos(rust_src) {
        Ok(r) => r,
        Err(e) => return vec![format!("Rust source: {e}")],
    };
    let c = match header_protos(header) {
        Ok(c) => c,
        Err(e) => return vec![format!("header: {e}")],
    };
    for (name, rp) in &rust {
        match c.get(name) {
            None => diffs.push(format!("{name}: in the Rust source, missing from the header")),
            Some(cp) if cp != rp => diffs.push(format!("{name}:\n  Rust   {rp:?}\n  header {cp:?}")),
            Some(_) => {}
        }
    }
    for name in c.keys().filter(|n| !rust.contains_key(*n)) {
        diffs.push(format!("{name}: in the header, not exported by the Rust source"));
    }
    let (rc, hc) = (rust_codes(rust_src), header_codes(header));
    if rc.is_empty() || rc != hc {
        diffs.push(format!("status codes differ:\n  Rust   {rc:?}\n  header {hc:?}"));
    }
    diffs
}

fn sources() -> (String, String) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut rust = String::new();
    let mut files: Vec<_> = std::fs::read_dir(root.join("src")).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    for f in files.iter().filter(|f| f.extension().is_some_and(|e| e == "rs")) {
        rust.push_str(&std::fs::read_to_string(f).unwrap());
        rust.push('\n');
    }
    let header = std::fs::read_to_string(root.join("../include/rnn_kernels.h")).unwrap();
    (rust, header)
}

#[test]
fn header_matches_the_rust_source() {
    let (rust, header) = sources();
    let protos = rust_protos(&rust).unwrap();
    let n = protos.len();
    assert!(n >= 21, "found only {n} extern \"C\" functions in capi/src");
    // The device-pointer entry points exist in every build (they answer
    // RNNK_ERR_BACKEND_UNAVAILABLE without the cuda feature), each with a trailing stream.
    for f in [
        "rnnk_forward_device",
        "rnnk_forward_training_device",
        "rnnk_forward_training_masked_device",
        "rnnk_backward_device",
        "rnnk_model_set_params_device",
        "rnnk_model_get_params_device",
    ] {
        let p = protos.get(f).unwrap_or_else(|| panic!("{f} is not exported by capi/src"));
        assert_eq!(p.params.last(), Some(&("stream".to_string(), "void*".to_string())), "{f}: the last parameter");
    }
    let diffs = differences(&rust, &header);
    assert!(diffs.is_empty(), "include/rnn_kernels.h differs from capi/src:\n{}", diffs.join("\n"));
    println!("{n} functions and {} status codes agree", rust_codes(&rust).len());
}

/// The check itself finds each kind of drift.
#[test]
fn the_check_finds_differences() {
    let (rust, header) = sources();
    let cases = [
        ("a type", header.replace("const float* params, size_t params_len", "const double* params, size_t params_len")),
        ("a parameter name", header.replace("size_t dy_len", "size_t dy_count")),
        ("a parameter order", header.replace("size_t proj_size, int bias", "int bias, size_t proj_size")),
        ("a missing function", header.replace("int rnnk_reserve_free(rnnk_reserve* reserve);", "")),
        ("a return type", header.replace("const char* rnnk_version(void);", "char* rnnk_version(void);")),
        ("a status value", header.replace("RNNK_ERR_PANIC = 9", "RNNK_ERR_PANIC = 10")),
        ("a constness", header.replace("int rnnk_model_get_params(const rnnk_model* model", "int rnnk_model_get_params(rnnk_model* model")),
        ("a device function's stream", header.replace("size_t params_len, void* stream);", "size_t params_len, void** stream);")),
        ("a missing device function", header.replace("int rnnk_backward_device(", "int rnnk_backward_device_(")),
    ];
    for (what, changed) in cases {
        assert_ne!(changed, header, "the test's replacement for {what} matched nothing");
        assert!(!differences(&rust, &changed).is_empty(), "a change of {what} in the header went unnoticed");
    }
    // And a function added on the Rust side only.
    let more = format!("{rust}\n#[no_mangle] pub extern \"C\" fn rnnk_new_thing(a: usize) -> c_int {{ 0 }}\n");
    assert!(!differences(&more, &header).is_empty());
}
