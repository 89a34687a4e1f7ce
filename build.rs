//! Generates the gRPC code from `proto/` with protox (pure Rust, no `protoc` needed) and
//! tonic-prost-build. The generated code and the encoded file descriptor set (for server
//! reflection) stay in OUT_DIR. Also lists the dashboard's built files (`web/dist`, committed)
//! for `include_bytes!`, so the binary serves the dashboard with no Node on the machine, and
//! lists the migrations of both dialects for `include_str!` (see `src/store/migrations.rs`).

use std::{env, fs, path::PathBuf};

use prost::Message;

const PROTOS: &[&str] = &[
    "proto/nexus/account/v1/account.proto",
    "proto/nexus/billing/v1/billing.proto",
    "proto/nexus/integrations/v1/integrations.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(PROTOS, ["proto"])?;

    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    // compile_fds ignores file_descriptor_set_path, so the set is written here for reflection.
    fs::write(out_dir.join("nexus_descriptor.bin"), fds.encode_to_vec())?;

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // RPCs a later issue implements answer UNIMPLEMENTED without hand-written stubs.
        .generate_default_stubs(true)
        .compile_fds(fds)?;

    embed_dashboard(&out_dir)?;
    embed_migrations(&out_dir)?;
    Ok(())
}

/// Writes `dashboard_assets.rs`: `(url path, content type, bytes)` for every file of web/dist.
fn embed_dashboard(out_dir: &std::path::Path) -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=web/dist");
    let root = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?).join("web/dist");
    let mut files = Vec::new();
    collect(&root, &mut files)?;
    files.sort();
    let mut code = String::from("pub static ASSETS: &[(&str, &str, &[u8])] = &[\n");
    for file in &files {
        let relative = file
            .strip_prefix(&root)?
            .to_str()
            .ok_or("a dashboard file name is not UTF-8")?
            .replace('\\', "/");
        let content_type = match file.extension().and_then(|e| e.to_str()) {
            Some("html") => "text/html; charset=utf-8",
            Some("js") => "text/javascript; charset=utf-8",
            Some("css") => "text/css; charset=utf-8",
            Some("svg") => "image/svg+xml",
            Some("json") => "application/json",
            Some("png") => "image/png",
            Some("woff2") => "font/woff2",
            _ => "application/octet-stream",
        };
        code.push_str(&format!(
            "    ({relative:?}, {content_type:?}, include_bytes!({:?})),\n",
            file.display().to_string()
        ));
    }
    code.push_str("];\n");
    fs::write(out_dir.join("dashboard_assets.rs"), code)?;
    Ok(())
}

/// Writes `migrations.rs`: `POSTGRES` and `SQLITE`, each `(version, description, SQL)` in
/// version order, read from `migrations/<dialect>/<version>_<description>.sql` the way
/// `sqlx::migrate!` reads them (underscores in the description become spaces).
fn embed_migrations(out_dir: &std::path::Path) -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?).join("migrations");
    println!("cargo:rerun-if-changed=migrations");
    let mut code = String::new();
    for (constant, dialect) in [("POSTGRES", "postgres"), ("SQLITE", "sqlite")] {
        let dir = root.join(dialect);
        println!("cargo:rerun-if-changed={}", dir.display());
        let mut found = Vec::new();
        for entry in fs::read_dir(&dir)? {
            let path = entry?.path();
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .ok_or("a migration file name is not UTF-8")?;
            let Some(stem) = name.strip_suffix(".sql") else {
                continue;
            };
            let (version, description) = stem
                .split_once('_')
                .ok_or_else(|| format!("{name}: expected <version>_<description>.sql"))?;
            let version: i64 = version
                .parse()
                .map_err(|_| format!("{name}: the version is not a number"))?;
            found.push((
                version,
                description.replace('_', " "),
                path.display().to_string(),
            ));
        }
        found.sort();
        code.push_str(&format!(
            "pub static {constant}: &[(i64, &str, &str)] = &[\n"
        ));
        for (version, description, path) in found {
            code.push_str(&format!(
                "    ({version}, {description:?}, include_str!({path:?})),\n"
            ));
        }
        code.push_str("];\n");
    }
    fs::write(out_dir.join("migrations.rs"), code)?;
    Ok(())
}

fn collect(dir: &std::path::Path, files: &mut Vec<PathBuf>) -> std::io::Result<()> {
    if !dir.exists() {
        return Ok(());
    }
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            println!("cargo:rerun-if-changed={}", path.display());
            collect(&path, files)?;
        } else {
            files.push(path);
        }
    }
    Ok(())
}
