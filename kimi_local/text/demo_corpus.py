"""A built-in, deterministic text sample to learn the demo tokenizer's BPE merges from.

The demo and tiny checkpoints need a tokenizer in Kimi's format but cannot ship Kimi's 163k ranks. Merges
learned from this sample make common English words, code idioms, numbers, CJK words and emoji single tokens,
so demo prompts tokenize into plausible lengths. The sample mixes a few hand-written paragraphs with
sentences drawn from word lists by a seeded generator (Zipf-like word frequencies), so it is identical on
every machine and Python version.
"""

from __future__ import annotations

import random

PARAGRAPHS = """\
Kimi is an AI assistant created by Moonshot AI. You can ask it questions, give it documents to read, or let it
call tools such as a weather service, a calculator or a search engine. The assistant answers in the language
of the question, and it tries to be helpful, honest and concise.
This program runs a very large language model on one workstation. The attention layers run on the graphics
card when there is one, and the experts of the mixture run on the processor, which reads their weights from
memory or, when they are not cached, from a fast solid state drive. Each token chooses eight of the three
hundred and eighty four experts in every layer, so only a small part of the model is used for each word.
The weather in Beijing today is sunny with a high of twenty six degrees. Tomorrow it will be cloudy and a
little cooler. In San Francisco the fog comes in every afternoon, and the temperature stays mild all year.
To install the package, create a virtual environment, activate it, and run pip install with the path to the
repository. Then start the server with the model directory and point your editor at the local address.
Please write a function that returns the sum of the squares of a list of numbers. The function should raise
an error when the input is not a list, and it should handle an empty list by returning zero.
Once upon a time there was a small village at the foot of a mountain. The people who lived there grew rice
and tea, and every spring they held a festival with music, dancing and food for everyone.
"""

ENGLISH = """\
the of and to a in is it you that he was for on are with as I his they be at one have this from or had by
not word but what some we can out other were all there when up use your how said an each she which do their
time if will way about many then them write would like so these her long make thing see him two has look more
day could go come did number sound no most people my over know water than call first who may down side been
now find any new work part take get place made live where after back little only round man year came show
every good me give our under name very through just form sentence great think say help low line differ turn
cause much mean before move right boy old too same tell does set three want air well also play small end put
home read hand port large spell add even land here must big high such follow act why ask men change went
light kind off need house picture try us again animal point mother world near build self earth father head
stand own page should country found answer school grow study still learn plant cover food sun four between
state keep eye never last let thought city tree cross farm hard start might story saw far sea draw left late
run while press close night real life few north open seem together next white children begin got walk
example ease paper group always music those both mark often letter until mile river car feet care second
book carry took science eat room friend began idea fish mountain stop once base hear horse cut sure watch
color face wood main enough plain girl usual young ready above ever red list though feel talk bird soon body
dog family direct pose leave song measure door product black short numeral class wind question happen
complete ship area half rock order fire south problem piece told knew pass since top whole king space heard
best hour better true during hundred five remember step early hold west ground interest reach fast verb sing
listen six table travel less morning ten simple several vowel toward war lay against pattern slow center
love person money serve appear road map rain rule govern pull cold notice voice unit power town fine certain
fly fall lead cry dark machine note wait plan figure star box noun field rest correct able pound done beauty
drive stood contain front teach week final gave green quick develop ocean warm free minute strong special
mind behind clear tail produce fact street inch multiply nothing course stay wheel full force blue object
decide surface deep moon island foot system busy test record boat common gold possible plane instead dry
wonder laugh thousand ago ran check game shape equate miss brought heat snow tire bring yes distant fill
east paint language among model memory token tokens expert experts layer layers attention weights cache
server request response message messages assistant user system tool tools function arguments result error
file files directory checkpoint tensor tensors matrix vector compute processor graphics card install
weather temperature location today tomorrow degrees sunny cloudy search query document summary translate
ability absolute academic accept access account accurate achieve across action active actual address
adjust admit adult advance advice affect afford afraid agency agent agree ahead allow almost alone along
already although amount analysis ancient angle annual another anxiety anyone apart apparent approach argue
arrive article artist assume attack attempt attend author available avoid award aware balance battle
beautiful because become behavior believe benefit beyond billion birth blood board border bottom brain
branch bread break bridge brief bright broad brother budget building business button camera campaign
cancer capital capture career careful category central century chain chair challenge chance chapter
character charge chief choice choose church circle citizen claim classic client climate clock coach coast
coffee collect college column combine comfort command comment commit community company compare compete
complex concept concern condition conduct confirm connect consider constant consumer context continue
control convert corner cost cotton council count couple courage create credit crime crisis critical crowd
culture current customer damage danger data dead deal debate decade default defense define degree deliver
demand depend describe design detail detect device diet difficult digital dinner discover discuss disease
display distance divide doctor dollar domain double dream dress drink during duty economy edge education
effect effort eight either election element email emergency employee empty energy engine enjoy ensure
enter entire environment episode equal escape estimate evening event evidence exact exchange exercise
exist expect expense explain express extend extra factor failure fashion feature federal feeling fiction
fight final finance finger finish floor focus foreign forget format forward frame frequent fresh future
garden general generate gentle global goal growth guard guess guest guide handle happy health heavy hidden
history holiday honest hospital hotel however human hungry image impact improve include income increase
indeed index industry inform initial input inside instance intend internal invest issue item journey judge
justice kitchen knowledge label labor launch lawyer layout leader league level library license limit
linear link liquid little local logic loss lucky manage manner market master match matter maybe medium
member mention method middle million minor mirror mission mobile modern moment monitor morning motion
natural nature network normal novel object obtain office online option origin output owner package pair
parent partner party patient payment peace perfect perform period permit phase phone phrase physical
planet please pocket policy popular position positive prefer prepare present pretty prevent price primary
print private process profile program project promise proper protect provide public purpose quality
quarter queue quiet radio random range rapid rather ratio reason receive recent reduce reflect region
release remove repeat replace report require research resource return review reward rich robot routine
safety sample scale schedule score screen script season secret section secure select senior sense series
service session settle shadow share shift signal silver simply single sister skill smart social software
solid solution source speaker speed spirit split sport spring square stable stage standard status stock
storage strange stream stress string structure student style subject success sudden suggest summer supply
support switch symbol table target teacher team technology theory thread ticket title total track trade
traffic training transfer trouble trust twice typical update upload upper usual valid value variable
various version video village virtual visit visual volume window winter worker writer yellow yesterday
don't can't won't isn't it's I'm you're we've they'll he'd she's that's there's what's let's
"""

CODE = """\
def return import from class self None True False if elif else for while in not and or with as try except
finally raise yield lambda pass break continue print len range list dict str int float tuple set open
__init__ __name__ __main__ args kwargs numpy np torch tensor shape dtype device cuda cpu float32 bfloat16
function const let var await async console log JSON parse stringify null undefined this new Promise export
public private static void String println include std vector size_t auto template typename namespace
"""

CODE_LINES = """\
def main():
    args = parser.parse_args()
    return 0
if __name__ == "__main__":
    raise SystemExit(main())
import numpy as np
import torch
x = torch.zeros(4, 8, dtype=torch.float32)
for i in range(len(items)):
    total += items[i] * weights[i]
class Config:
    def __init__(self, path: str) -> None:
        self.path = path
const result = await fetch(url, { method: "POST", body: JSON.stringify(data) });
console.log(`status: ${response.status}`);
{"role": "user", "content": "What is the weather in Beijing?"}
{"type": "function", "function": {"name": "get_weather", "arguments": "{\\"city\\": \\"Beijing\\"}"}}
functions.get_weather:0 {"city": "Beijing", "unit": "celsius"}
## Return of functions.get_weather:0
<div class="container"><p>Hello, world!</p></div>
SELECT name, count(*) FROM users WHERE age > 18 GROUP BY name;
$ pip install -e . && pytest tests -q
"""

# CJK and other scripts, emoji and symbols: whitespace-separated "words".
MULTILINGUAL = """\
你好 世界 中国 北京 上海 天气 今天 明天 温度 问题 回答 我们 你们 他们 这个 那个 什么 为什么 怎么 可以 没有
中文 英文 数据 文件 系统 服务 程序 代码 函数 参数 结果 错误 用户 请求 图片 音乐 电影 城市 学校 老师 学生 医生 公司
经济 社会 文化 历史 科学 技术 发展 生活 世界上 已经 现在 以后 以前 因为 所以 但是 如果 虽然 还是 或者 一起 一样
时间 工作 学习 朋友 电脑 模型 语言 人工智能 助手 月之暗面 谢谢 请问 非常 好的 一 二 三 四 五 六 七 八 九 十
的 是 不 了 在 人 有 我 他 这 中 大 来 上 国 个 到 说 们 为 子 和 你 地 出 道 也 时 年
こんにちは ありがとう 日本語 東京 天気 です ます 私 あなた カタカナ ひらがな
안녕하세요 감사합니다 한국어 서울 날씨 오늘
Привет мир спасибо погода сегодня завтра язык модель
Bonjour merci très café naïve été français où déjà
Grüße schön Straße über Mädchen Größe danke
¿Qué tal? mañana niño señor español corazón
Γειά σου κόσμε ευχαριστώ
مرحبا شكرا עברית שלום नमस्ते धन्यवाद
😀 😂 🙂 👍 🎉 ❤️ 🔥 🚀 ✅ ❌ 🤖 🌧️ ☀️ 👋🏽 👨‍💻
→ ← ≤ ≥ ≠ ± × ÷ ∞ √ π ° € £ ¥ © ™ … — – “ ” ‘ ’ « »
"""

PUNCTUATION = [". ", ", ", "! ", "? ", ": ", "; ", "\n", "\n\n", " - ", " (", ") ", '"', "'s ", "...", " / "]


def _zipf_choice(rng: random.Random, words: list[str]) -> str:
    # Rank r drawn with probability ~ 1/(r+1): a few very frequent words, a long tail.
    r = int(len(words) ** rng.random()) - 1
    return words[max(0, min(r, len(words) - 1))]


def _sentence(rng: random.Random, words: list[str]) -> str:
    n = rng.randint(4, 14)
    out = [_zipf_choice(rng, words) for _ in range(n)]
    if rng.random() < 0.7:
        out[0] = out[0].capitalize()
    if rng.random() < 0.4:
        out.insert(rng.randrange(len(out)), str(rng.choice([rng.randint(0, 99), rng.randint(100, 999), 2025])))
    if rng.random() < 0.05:
        out = [w.upper() for w in out]
    return " ".join(out) + rng.choice(PUNCTUATION)


def demo_corpus(seed: int = 0, num_sentences: int = 6000) -> str:
    """The sample text: paragraphs and code repeated (so their pieces merge first), then generated sentences."""
    rng = random.Random(seed)
    english = ENGLISH.split()
    code = CODE.split()
    multilingual = MULTILINGUAL.split()
    parts = [PARAGRAPHS] * 3 + [CODE_LINES] * 4 + [MULTILINGUAL] * 3
    for i in range(num_sentences):
        kind = rng.random()
        if kind < 0.75:
            parts.append(_sentence(rng, english))
        elif kind < 0.85:
            parts.append(_sentence(rng, code))
        elif kind < 0.95:
            parts.append("".join(_zipf_choice(rng, multilingual) for _ in range(rng.randint(2, 8))) + rng.choice("，。！？ \n"))
        else:
            indent = " " * rng.choice([0, 4, 8, 12])
            parts.append(f"\n{indent}{_zipf_choice(rng, code)} = {rng.randint(0, 999)}\n")
    return "".join(parts)
