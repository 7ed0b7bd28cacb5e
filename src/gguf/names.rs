//! llama.cpp's tensor names for the HF names the model loaders ask for: `blk.N.*` for the
//! Llama decoder, `v.*` (CLIP) and `mm.*` (projector) in an mmproj file.

use crate::weights::Component;

fn llama_layer(rest: &str) -> Option<&'static str> {
    Some(match rest {
        "input_layernorm.weight" => "attn_norm.weight",
        "self_attn.q_proj.weight" => "attn_q.weight",
        "self_attn.k_proj.weight" => "attn_k.weight",
        "self_attn.v_proj.weight" => "attn_v.weight",
        "self_attn.o_proj.weight" => "attn_output.weight",
        "post_attention_layernorm.weight" => "ffn_norm.weight",
        "mlp.gate_proj.weight" => "ffn_gate.weight",
        "mlp.up_proj.weight" => "ffn_up.weight",
        "mlp.down_proj.weight" => "ffn_down.weight",
        _ => return None,
    })
}

/// CLIP layer names. llama.cpp's older converter wrote fc1 as `ffn_down` and fc2 as
/// `ffn_up`; the newer one the other way round. Both are candidates, and the loader picks
/// the one whose shape fits.
fn clip_layer(rest: &str) -> Vec<String> {
    let (stem, tail) = match rest.rsplit_once('.') {
        Some(x) => x,
        None => return vec![],
    };
    let mapped: &[&str] = match stem {
        "layer_norm1" => &["ln1"],
        "layer_norm2" => &["ln2"],
        "self_attn.q_proj" => &["attn_q"],
        "self_attn.k_proj" => &["attn_k"],
        "self_attn.v_proj" => &["attn_v"],
        "self_attn.out_proj" => &["attn_out"],
        "mlp.fc1" => &["ffn_up", "ffn_down"],
        "mlp.fc2" => &["ffn_down", "ffn_up"],
        _ => &[],
    };
    mapped.iter().map(|m| format!("{m}.{tail}")).collect()
}

/// Candidate GGUF names of an HF tensor name inside a component, best first.
pub fn gguf_names(c: Component, name: &str) -> Vec<String> {
    match c {
        Component::Language => {
            if name == "embed_tokens.weight" {
                return vec!["token_embd.weight".into()];
            }
            if name == "norm.weight" {
                return vec!["output_norm.weight".into()];
            }
            if let Some(rest) = name.strip_prefix("layers.") {
                if let Some((i, rest)) = rest.split_once('.') {
                    if let Some(m) = llama_layer(rest) {
                        return vec![format!("blk.{i}.{m}")];
                    }
                }
            }
            vec![]
        }
        Component::LmHead => vec!["output.weight".into()],
        Component::Projector => match name.split_once('.') {
            Some(("linear_1", tail)) => vec![format!("mm.0.{tail}")],
            Some(("linear_2", tail)) => vec![format!("mm.2.{tail}")],
            _ => vec![],
        },
        Component::Vision => {
            let fixed = match name {
                "embeddings.patch_embedding.weight" => Some("v.patch_embd.weight"),
                "embeddings.class_embedding" => Some("v.class_embd"),
                "embeddings.position_embedding.weight" => Some("v.position_embd.weight"),
                "pre_layrnorm.weight" => Some("v.pre_ln.weight"),
                "pre_layrnorm.bias" => Some("v.pre_ln.bias"),
                "post_layernorm.weight" => Some("v.post_ln.weight"),
                "post_layernorm.bias" => Some("v.post_ln.bias"),
                _ => None,
            };
            if let Some(f) = fixed {
                return vec![f.into()];
            }
            if let Some(rest) = name.strip_prefix("encoder.layers.") {
                if let Some((i, rest)) = rest.split_once('.') {
                    return clip_layer(rest)
                        .into_iter()
                        .map(|m| format!("v.blk.{i}.{m}"))
                        .collect();
                }
            }
            vec![]
        }
    }
}

/// Whether a Llama weight was permuted by llama.cpp's converter for its interleaved rotary
/// layout (q and k projections), and with how many heads.
pub fn rotary_permuted(name: &str) -> Option<bool> {
    if name.ends_with("self_attn.q_proj.weight") {
        Some(true)
    } else if name.ends_with("self_attn.k_proj.weight") {
        Some(false)
    } else {
        None
    }
}

/// The GGUF row that holds HF row `r` of a q/k projection with heads of `hd` rows:
/// llama.cpp stores each head's rows interleaved (pairs (i, i + hd/2) adjacent).
pub fn unpermuted_source_row(r: usize, hd: usize) -> usize {
    let (h, j) = (r / hd, r % hd);
    let half = hd / 2;
    let (part, i) = (j / half, j % half);
    h * hd + 2 * i + part
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_to_llama_cpp() {
        assert_eq!(
            gguf_names(Component::Language, "layers.3.self_attn.o_proj.weight"),
            vec!["blk.3.attn_output.weight"]
        );
        assert_eq!(
            gguf_names(Component::Vision, "encoder.layers.0.mlp.fc1.bias"),
            vec!["v.blk.0.ffn_up.bias", "v.blk.0.ffn_down.bias"]
        );
        assert_eq!(
            gguf_names(Component::Projector, "linear_2.bias"),
            vec!["mm.2.bias"]
        );
        assert!(gguf_names(Component::Language, "layers.0.unknown.weight").is_empty());
        // Head of 4 rows: HF rows 0, 1 (first half) and 2, 3 (second half) sit at 0, 2, 1, 3.
        let rows: Vec<usize> = (0..8).map(|r| unpermuted_source_row(r, 4)).collect();
        assert_eq!(rows, vec![0, 2, 1, 3, 4, 6, 5, 7]);
    }
}
